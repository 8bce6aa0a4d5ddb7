"""The compiled change reader (shared/compiled/_changes.pyx) gives a copy the changes the
pure-Python path gives, or leaves the event to it: over generated change events (every
operation, every value type, keys with and without the table's key, before and after the
snapshot and a replay window), events with entries missing, reordered, repeated or of
other types, and bytes that are not MessagePack at all, `ChangeReader.read` returns the same
change (its types too), or raises the same error, with the compiled reader on and off.

Where the module is not built these tests skip, unless BRIDGE_TEST_REQUIRE_COMPILED=1 (CI
sets it: there they must run)."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pg_nats_bridge.change_reader import ChangeReader
from pg_nats_bridge.changes import Insert, TableSchema, Update
from pg_nats_bridge.lsn import Lsn
from shared import compiled
from tests.harness.compiled import built

built(compiled.changes)

T = "public.t"
SUBJECT = b"cdc.t.insert"

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.floats(width=32, allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
_ROWS = st.dictionaries(st.sampled_from(["id", "v", "w", "ö"]) | st.text(max_size=8), _SCALARS,
                        max_size=5)  # fmt: skip
_ODD = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)

_MARK = "\x01mark\x02"  # stands in for bytes of the same length that are not UTF-8
_NOT_UTF8 = b"\xffmark\xfe"


@st.composite
def events(draw: st.DrawFn) -> bytes:
    """A change event as the replicator packs it, often with something changed."""
    lsn = draw(st.sampled_from(["0/50", "0/150", "0/300", "1/0"]))
    body: dict[Any, Any] = {
        "schema": "public",
        "table": "t",
        "operation": draw(st.sampled_from(["insert", "update", "delete", "truncate", "upsert"])),
        "lsn": lsn,
        "commit_lsn": lsn,
        "xid": draw(st.integers(0, 1 << 32)),
        "ordinal": draw(st.integers(0, 1 << 20)),
        "commit_time": "2026-12-07T00:00:00.000000Z",
        "data": draw(st.none() | _ROWS),
        "old": draw(st.none() | _ROWS),
        "unchanged": draw(st.lists(st.sampled_from(["v", "w"]) | st.text(max_size=4), max_size=2)),
    }
    change = draw(
        st.sampled_from(["none"] * 6 + ["drop", "retype", "extra", "odd", "order", "not utf-8"])
    )
    key = draw(st.sampled_from(sorted(body)))
    if change == "not utf-8":  # a str (an entry's, a key, a value) whose bytes are not UTF-8
        where = draw(st.sampled_from(["value", "key", "row value", "row key"]))
        if where == "value":
            body[key] = _MARK
        elif where == "key":
            body[_MARK] = draw(_SCALARS)
        else:
            row = body["data"] = dict(body["data"] or {})
            row.update({_MARK: 1} if where == "row key" else {"v": _MARK})
        return msgpack.packb(body, use_bin_type=True).replace(_MARK.encode(), _NOT_UTF8)
    if change == "drop":
        del body[key]
    elif change == "retype":
        body[key] = draw(_ODD)
    elif change == "extra":
        body[draw(st.text(max_size=6) | st.integers(-100, 100))] = draw(_ODD)
    elif change == "order":
        body = dict(reversed(list(body.items())))
    packed = msgpack.packb(body, use_bin_type=True)
    if change == "odd":  # cut, a byte flipped, or something after the map
        at = draw(st.integers(0, len(packed) - 1))
        packed = draw(st.sampled_from([
            packed[:at], packed[:at] + bytes([packed[at] ^ 0x5A]) + packed[at + 1:],
            packed + b"\x00",
        ]))  # fmt: skip
    return packed


def _reader(on: bool, key: list[str], window: bool) -> ChangeReader:
    changes = ChangeReader({"t": T})
    if not on:
        changes.compiled = None
    changes.schemas[T] = TableSchema.from_document(
        {"schema": T, "columns": [{"name": "id"}, {"name": "v"}], "primary_key": key}
    )
    changes.reset({T: Lsn.parse("0/100")}, {T: Lsn.parse("0/200")} if window else {})
    return changes


def _read(changes: ChangeReader, stream: list[bytes]) -> list[str]:
    """What each event asks (or the error), as text: a change's value types count."""
    said = []
    for seq, data in enumerate(stream, 1):
        try:
            said.append(repr(changes.read(SUBJECT, seq, data)))
        except Exception as exc:
            said.append(f"{type(exc).__name__}: {exc}")
    said.append(repr((changes.last_commit_time, changes.replay_open, changes.past_snapshot)))
    return said


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    stream=st.lists(events() | st.binary(max_size=30), min_size=1, max_size=5),
    key=st.sampled_from([["id"], []]),
    window=st.booleans(),
)
def test_the_compiled_reader_gives_the_pure_paths_changes(
    stream: list[bytes], key: list[str], window: bool
) -> None:
    assert _read(_reader(True, key, window), stream) == _read(_reader(False, key, window), stream)


def test_the_compiled_reader_takes_the_replicators_events() -> None:
    """Not a vacuous equality: it reads an insert and an update itself, every value type."""
    row = {"id": -(1 << 40), "v": "zoë", "f": 1.5, "b": b"\x00\xff", "t": True, "n": None,
           "u": (1 << 64) - 1}  # fmt: skip
    base = {"schema": "public", "table": "t", "lsn": "0/300", "commit_lsn": "0/300", "xid": 9,
            "ordinal": 0, "commit_time": "2026-12-07T00:00:00.000000Z"}  # fmt: skip
    insert = msgpack.packb({**base, "operation": "insert", "data": row, "old": None,
                            "unchanged": []})  # fmt: skip
    update = msgpack.packb({**base, "operation": "update", "data": row, "old": {"id": 5},
                            "unchanged": ["w"]})  # fmt: skip
    assert compiled.changes.read_change(insert) is not None  # type: ignore[union-attr]
    changes = _reader(True, ["id"], False)
    assert changes.read(SUBJECT, 1, insert) == Insert(
        T, row, 1, "0/300", base["commit_time"], False
    )
    assert changes.read(SUBJECT, 2, update) == Update(
        T, {"id": 5}, row, ("w",), 2, "0/300", base["commit_time"], False
    )
    # Past the snapshot with no window open, an insert is built by the compiled reader.
    assert T in changes.past_snapshot and not changes.replay_open
    assert type(compiled.changes.read_insert(insert, T, 3, Insert)) is Insert  # type: ignore[union-attr]
    assert changes.read(SUBJECT, 3, insert) == Insert(
        T, row, 3, "0/300", base["commit_time"], False
    )
