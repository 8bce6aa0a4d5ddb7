"""How long the replicator waits before restarting its pipeline: the backoff against servers
that answer, and no longer than the next probe once what was missing is back. The probes are
replaced here (the e2e failover and cluster tests run them against real servers)."""

from __future__ import annotations

import time

import nats.errors
import pytest

from services.replicator import supervisor
from services.replicator.errors import TransientError
from services.replicator.settings import ReplicatorSettings
from services.replicator.supervisor import Replicator, _stream_unanswered


def replicator_with(
    answers: list[bool], monkeypatch: pytest.MonkeyPatch
) -> tuple[Replicator, list[float]]:
    """A replicator whose probes answer `answers` in turn (then True), recording when."""
    monkeypatch.setattr(supervisor, "PROBE_SECONDS", 0.05)
    replicator = Replicator(ReplicatorSettings(table=["t"]))
    asked: list[float] = []

    def probe() -> bool:
        asked.append(time.monotonic())
        return answers.pop(0) if answers else True

    monkeypatch.setattr(replicator, "_postgres_writable", probe)
    monkeypatch.setattr(replicator, "_stream_answers", lambda: True)
    return replicator, asked


def test_servers_that_answer_get_the_whole_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    replicator, asked = replicator_with([], monkeypatch)
    started = time.monotonic()
    replicator._wait_before_retry(0.4)
    assert time.monotonic() - started >= 0.4
    assert len(asked) == 1


def test_a_server_back_before_the_backoff_ends_restarts_at_the_next_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replicator, asked = replicator_with([False, False, False], monkeypatch)
    started = time.monotonic()
    replicator._wait_before_retry(30.0)
    assert time.monotonic() - started < 5  # not the 30 s backoff
    assert len(asked) == 4  # down, down, down, up


def test_a_delay_of_zero_waits_until_the_servers_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    replicator, asked = replicator_with([False] * 5, monkeypatch)
    replicator._wait_before_retry(0.0)
    assert len(asked) == 6


def test_a_stop_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    replicator, _ = replicator_with([False] * 1000, monkeypatch)
    replicator.stop_requested.set()
    started = time.monotonic()
    replicator._wait_before_retry(30.0)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("exc", "unanswered"),
    [
        (nats.errors.TimeoutError(), True),
        (nats.errors.NoRespondersError(), True),
        (TimeoutError(), True),
        (TransientError("JetStream did not answer on CDC: no responders (stream missing)"), True),
        (TransientError("NATS connection lost; unacknowledged changes will be replayed"), False),
        (TransientError("no PubAck from JetStream for 10 s"), False),
    ],
)
def test_what_counts_as_jetstream_leaving_a_start_unanswered(
    exc: BaseException, unanswered: bool
) -> None:
    assert _stream_unanswered(exc) is unanswered
