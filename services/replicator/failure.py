"""How the actors tell the supervisor that the pipeline broke."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from shared.postgres import ReplicationConnectionError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# What a server outage or bad data raises: the supervisor logs one line for it and restarts
# (or stops). Anything else is a bug, which pykka logs with its traceback.
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    ReplicationConnectionError,
    psycopg.Error,
    OSError,
    TimeoutError,
)


class FailureSignal:
    """Set once, by the first actor that fails; the supervisor waits on it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
                log.debug("pipeline failure: %r", error)
        self._event.set()

    @property
    def failed(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


def reports_expected_failures(method: F) -> F:
    """For an actor's `on_receive`: an expected failure goes to the actor's FailureSignal
    (`self.failure`) and stops the actor, instead of escaping to pykka, which would log a
    traceback for an ordinary outage."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except EXPECTED_FAILURES as exc:
            self.failure.fail(exc)
            self.stop()  # on_stop releases the connection
            return None

    return wrapper  # type: ignore[return-value]
