"""What the replicator does after its pipeline failed (services/replicator/restart_policy.py):
which failure is which (by type and SQLSTATE, never by message text), the backoff against
servers that answer, and no longer than the next probe once what was missing is back. The
probes are replaced here (the e2e failover and cluster tests run them against real servers)."""

from __future__ import annotations

import threading
import time

import nats.errors
import psycopg
import pytest

from services.replicator import restart_policy
from services.replicator.errors import (
    Failure,
    PermanentError,
    SlotBusyError,
    StreamUnansweredError,
    TransientError,
    classify,
)
from services.replicator.restart_policy import RestartPolicy
from services.replicator.settings import ReplicatorSettings
from shared.postgres import ReplicationConnectionError


def policy_with(
    answers: list[bool], monkeypatch: pytest.MonkeyPatch
) -> tuple[RestartPolicy, list[float]]:
    """A policy whose probes answer `answers` in turn (then True), recording when."""
    monkeypatch.setattr(restart_policy, "PROBE_SECONDS", 0.05)
    policy = RestartPolicy(ReplicatorSettings(table=["t"]), threading.Event(), lambda: False)
    asked: list[float] = []

    def probe() -> bool:
        asked.append(time.monotonic())
        return answers.pop(0) if answers else True

    monkeypatch.setattr(policy, "_postgres_writable", probe)
    monkeypatch.setattr(policy, "_stream_answers", lambda: True)
    return policy, asked


def test_servers_that_answer_get_the_whole_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    policy, asked = policy_with([], monkeypatch)
    started = time.monotonic()
    policy.wait(policy.after(TransientError("x"), made_progress=False))  # the first: 0.5 s
    assert time.monotonic() - started >= 0.5
    assert len(asked) == 1


def test_a_server_back_before_the_backoff_ends_restarts_at_the_next_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy, asked = policy_with([False, False, False], monkeypatch)
    for _ in range(6):  # 0.5, 1, 2, 4, 8, 16: the next is 30 s
        policy.after(TransientError("x"), made_progress=False)
    started = time.monotonic()
    policy.wait(policy.after(TransientError("x"), made_progress=False))
    assert time.monotonic() - started < 5  # not the 30 s backoff
    assert len(asked) == 4  # down, down, down, up


def test_jetstream_unanswered_waits_until_the_servers_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy, asked = policy_with([False] * 5, monkeypatch)
    restart = policy.after(StreamUnansweredError("no responders"), made_progress=False)
    assert restart.delay == 0
    policy.wait(restart)
    assert len(asked) == 6


def test_progress_resets_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    policy, _ = policy_with([], monkeypatch)
    delays = [policy.after(TransientError("x"), made_progress=False).delay for _ in range(3)]
    assert delays == [0.5, 1.0, 2.0]
    assert policy.after(TransientError("x"), made_progress=True).delay == 0.5
    # Unanswered after the pipeline published: a new incident, with the backoff's first wait.
    restart = policy.after(StreamUnansweredError("no responders"), made_progress=True)
    assert restart.delay == 0.5


def test_a_stop_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    policy, _ = policy_with([False] * 1000, monkeypatch)
    policy.stop_requested.set()
    started = time.monotonic()
    policy.wait(policy.after(TransientError("x"), made_progress=False))
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (nats.errors.TimeoutError(), Failure.UNANSWERED),
        (nats.errors.NoRespondersError(), Failure.UNANSWERED),
        (TimeoutError(), Failure.UNANSWERED),
        (StreamUnansweredError("JetStream did not answer on CDC"), Failure.UNANSWERED),
        # The words alone decide nothing:
        (TransientError("no responders; nats: timeout"), Failure.TRANSIENT),
        (TransientError("slot is active for PID 7"), Failure.TRANSIENT),
        (TransientError("no PubAck from JetStream for 10 s"), Failure.TRANSIENT),
        (SlotBusyError("slot in use"), Failure.SLOT_BUSY),
        (ReplicationConnectionError('slot "s" is active for PID 7', "55006"), Failure.SLOT_BUSY),
        (psycopg.errors.ObjectInUse("in use"), Failure.SLOT_BUSY),
        (ReplicationConnectionError("server closed the connection"), Failure.TRANSIENT),
        (PermanentError("fix it"), Failure.PERMANENT),
        (psycopg.errors.InsufficientPrivilege("no"), Failure.PERMANENT),
    ],
)
def test_what_a_failure_is(exc: BaseException, failure: Failure) -> None:
    assert classify(exc) is failure
