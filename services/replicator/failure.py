"""How the actors tell the supervisor that the pipeline broke."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


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
