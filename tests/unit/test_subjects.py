import pytest
from hypothesis import given
from hypothesis import strategies as st

from pg_nats_bridge import contract as subjects
from shared.lsn import Lsn

names = st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s)


@pytest.mark.parametrize(
    ("schema", "table", "token"),
    [
        ("public", "users", "users"),
        ("public", "Order-Items_2", "Order-Items_2"),
        ("sales", "orders", "sales~~orders"),
        ("public", "a.b", "a~2Eb"),
        ("public", "a b*>", "a~20b~2A~3E"),
        ("public", "x~y", "x~7Ey"),
        ("public", "é", "~C3~A9"),
    ],
)
def test_documented_tokens(schema: str, table: str, token: str) -> None:
    assert subjects.table_token(schema, table) == token
    assert subjects.parse_table_token(token) == (schema, table)


@given(names, names)
def test_tokens_are_valid_subject_tokens_and_reversible(schema: str, table: str) -> None:
    token = subjects.table_token(schema, table)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert subjects.parse_table_token(token) == (schema, table)


@given(names, names, names, names)
def test_different_tables_never_share_a_token(s1: str, t1: str, s2: str, t2: str) -> None:
    if (s1, t1) != (s2, t2):
        assert subjects.table_token(s1, t1) != subjects.table_token(s2, t2)


def test_subjects() -> None:
    assert subjects.cdc_subject("public", "users", "insert") == "cdc.users.insert"
    assert subjects.schema_subject("s", "t") == "init.schema.s~~t"
    assert subjects.snapshot_chunk_subject("public", "t", "snap-1", 3) == "init.snap.t.snap-1.3"
    assert subjects.snapshot_meta_subject("public", "t") == "init.meta.t"


@pytest.mark.parametrize("bad", ["", "a~~b~~c", "a~2", "a~zz", "a.b", "~FF"])
def test_tokens_no_name_maps_to_are_refused(bad: str) -> None:
    with pytest.raises(subjects.SubjectError):
        subjects.parse_table_token(bad)


def test_msg_id_is_unique_per_change_and_stable_across_replays() -> None:
    commit = Lsn.parse("0/16B3748")
    # The rows of one COPY share their WAL record's LSN; the ordinal tells them apart.
    ids = [subjects.change_msg_id(commit, ordinal) for ordinal in range(10_000)]
    assert len(set(ids)) == 10_000
    assert subjects.change_msg_id(Lsn.parse("0/16B3748"), 7) == ids[7] == "0/16B3748:7"
    assert subjects.change_msg_id(Lsn.parse("0/16B3749"), 7) != ids[7]


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("cdc.>", "cdc.users.insert", True),
        ("cdc.>", "cdc", False),
        (">", "bridge.snapshot.users", True),
        ("*.*", "bridge.snapshot", True),
        ("*.*", "bridge.snapshot.users", False),
        ("bridge.*.users", "bridge.snapshot.>", True),
        ("bridge.control.>", "bridge.snapshot.>", False),
        ("$KV.schemas.>", "$KV.*.users", True),
        ("$KV.other.>", "$KV.schemas.>", False),
        ("orders.>", "cdc.>", False),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b.c", False),
    ],
)
def test_subjects_overlap(a: str, b: str, overlap: bool) -> None:
    assert subjects.subjects_overlap(a, b) is overlap
    assert subjects.subjects_overlap(b, a) is overlap


tokens = st.sampled_from(["a", "b", "*", ">"])


@given(st.lists(tokens, min_size=1, max_size=4), st.lists(tokens, min_size=1, max_size=4))
def test_subjects_overlap_agrees_with_matching_some_subject(a: list[str], b: list[str]) -> None:
    """Brute force over the subjects of up to 5 tokens from {a, b, c}."""
    if ">" in a[:-1] or ">" in b[:-1]:
        return
    from itertools import product

    def matches(pattern: list[str], subject: tuple[str, ...]) -> bool:
        for i, token in enumerate(pattern):
            if token == ">":
                return len(subject) > i
            if i >= len(subject) or (token != "*" and token != subject[i]):
                return False
        return len(subject) == len(pattern)

    some = any(
        matches(a, s) and matches(b, s) for n in range(1, 6) for s in product("abc", repeat=n)
    )
    assert subjects.subjects_overlap(".".join(a), ".".join(b)) is some


@given(st.integers(0, 2**64 - 1), st.integers(0, 10**6))
def test_the_msg_id_prefix_and_an_ordinal_make_the_change_msg_id(lsn: int, ordinal: int) -> None:
    text = str(Lsn(lsn))
    built = subjects.change_msg_id_prefix(text) + b"%d" % ordinal
    assert built == subjects.change_msg_id(Lsn(lsn), ordinal).encode()


def test_cdc_and_init_subjects_parse_back_to_what_built_them() -> None:
    contract = subjects
    token = contract.table_token("sales", "a.b")
    for op in ("insert", "update", "delete", "truncate"):
        parsed = contract.parse_cdc_subject(contract.token_cdc_subject(token, op))
        assert (parsed.token, parsed.operation, parsed.message) == (token, op, False)
    marker = contract.parse_cdc_subject(contract.oversized_subject(token))
    assert (marker.token, marker.operation, marker.message) == (token, None, False)
    message = contract.parse_cdc_subject(contract.message_subject("audit"))
    assert (message.token, message.message) == ("audit", True)
    for foreign in ("cdc.t", "cdc.t.bogus", "init.meta.t", "cdc..insert", "cdc.t.insert.x"):
        with pytest.raises(contract.SubjectError):
            contract.parse_cdc_subject(foreign)
    assert contract.parse_init_subject(contract.snapshot_meta_subject("sales", "a.b")) == (
        "meta",
        token,
    )
    assert contract.parse_init_subject(contract.snapshot_chunk_subject("public", "t", "s", 3)) == (
        "snap",
        "t",
    )
    with pytest.raises(contract.SubjectError):
        contract.parse_init_subject("init.elsewhere.t")


def test_a_schema_change_subject_is_told_from_a_message_with_that_prefix() -> None:
    assert subjects.is_schema_change("cdc.items.schema")
    assert subjects.is_schema_change("cdc.sales~orders.schema")
    assert not subjects.is_schema_change("cdc.~message.schema")  # prefix `schema`
    assert not subjects.is_schema_change("cdc.items.insert")
    assert not subjects.is_schema_change("cdc.~commit")
    assert not subjects.is_schema_change("other.items.schema")
