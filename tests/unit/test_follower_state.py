"""`TableFollower.state_before(seq)` is what a copy stores when it could not apply the change at
`seq`: following on from it must hand that change out exactly as the first time, also when the
change closed a chunked snapshot's replay window (it must come out with `replay` again)."""

from __future__ import annotations

from typing import Any

from pg_nats_bridge import Lsn, TableFollower


class NoConnection:
    """The state is kept without NATS: nothing here is sent or read."""

    def jetstream(self) -> Any:
        return None


def follower_in_a_replay_window() -> TableFollower:
    follower = TableFollower(NoConnection(), ["t", "u"])  # type: ignore[arg-type]
    follower.changes.reset(
        {"public.t": Lsn.parse("0/10"), "public.u": Lsn.parse("0/10")},
        {"public.t": Lsn.parse("0/100")},
    )
    return follower


def test_the_state_before_the_change_that_closed_a_replay_window_still_replays() -> None:
    follower = follower_in_a_replay_window()
    assert follower.changes.replaying("public.t", "0/50", 5)
    assert not follower.changes.replaying("public.u", "0/60", 6)  # no window of its own
    assert not follower.changes.replaying("public.t", "0/200", 7)  # the window closes here
    follower._seq = 9
    assert "replay_until" not in follower.state
    assert follower.state_before(7) == {
        "seq": 6,
        "snapshots": {"public.t": "0/10", "public.u": "0/10"},
        "stream": "CDC",
        "replay_until": {"public.t": "0/100"},
    }
    assert "replay_until" not in follower.state_before(8)


def test_a_window_still_open_is_in_every_state() -> None:
    follower = follower_in_a_replay_window()
    assert follower.changes.replaying("public.t", "0/50", 5)
    follower._seq = 5
    assert follower.state["replay_until"] == {"public.t": "0/100"}
    assert follower.state_before(3)["replay_until"] == {"public.t": "0/100"}


def test_a_table_named_with_capitals_or_dots_keeps_its_name() -> None:
    follower = TableFollower(NoConnection(), ['"Sales"."Big.Orders"', "items"])  # type: ignore[arg-type]
    assert follower.tables == ["Sales.Big.Orders", "public.items"]
    assert follower.tokens == {"Sales.Big.Orders": "Sales~~Big~2EOrders", "public.items": "items"}
    assert follower._names["Sales.Big.Orders"] == ("Sales", "Big.Orders")


def test_a_table_left_out_is_in_the_state_and_its_changes_are_passed_over() -> None:
    follower = follower_in_a_replay_window()
    del follower.changes.snapshots["public.u"]
    follower._failed = {"public.u": "snapshot of public.u refused: no primary key"}
    assert follower.state["failed"] == {"public.u": "snapshot of public.u refused: no primary key"}
    assert follower.changes.before_snapshot("public.u", "0/FFFF")  # nothing of it to change
    assert not follower.changes.before_snapshot("public.t", "0/FFFF")
