"""45 seconds of the chaos soak (tests/chaos/soak.py; `make chaos` runs it longer)."""

from __future__ import annotations

import logging
import math
import os

import pytest

from tests.chaos.soak import run_soak


def test_chaos_soak_loses_nothing_and_duplicates_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chaos")
    seed = int(os.environ["BRIDGE_CHAOS_SEED"]) if "BRIDGE_CHAOS_SEED" in os.environ else None
    seconds = float(os.environ.get("BRIDGE_CHAOS_SECONDS", "45"))
    report = run_soak(seconds, seed)
    print(report.summary())
    replay = (
        f"replay: BRIDGE_CHAOS_SEED={report.seed} (or python -m tests.chaos --seed {report.seed})"
    )
    # A fault 3-8 s after the last one was dealt (about one per 6.5 s): fewer than one per
    # 9 s means the loop stalled.
    assert sum(report.faults.values()) >= int(seconds / 9), report.summary()
    assert report.transactions > 1000, report.summary()
    assert report.verify_exit == 0, f"{report.verify_output}\n{replay}"
    assert report.events > 10000, report.summary()
    assert report.duplicated == 0 and report.out_of_order == 0, f"{report.summary()}\n{replay}"
    assert all(math.isfinite(seconds) for _, seconds in report.recoveries), (
        f"a fault the bridge never recovered from: {report.recoveries}\n{replay}"
    )
    assert not report.unexpected_exits, f"services crashed: {report.unexpected_exits}\n{replay}"
    assert not report.workload_errors, f"the workload failed: {report.workload_errors}"
