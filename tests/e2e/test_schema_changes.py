"""Schema changes reach a copy in order and exactly, with a writer running the whole time:
`bridge replica` follows a 500-row table through each ALTER TABLE of the list below, and
after each `bridge verify` (every value compared with PostgreSQL at one point) says equal.
None of these changes writes row changes for the rows already there: an added column's
DEFAULT lives in the catalog, a type change rewrites the table, a rename touches no row. So
a copy that only followed the changes would hold NULLs, stale values or lost ones (what the
copy did before: 516 of 516 rows different after the first step)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from pg_nats_bridge import MemoryCopy, SqliteCopy
from tests.harness.background import Background
from tests.harness.copies import FollowedCopy, bridge, start_replica
from tests.harness.postgres import Database
from tests.harness.services import Service, stream_messages, wait_for

# Each step, and whether the copy reads the table again for it (else: followed in place, or
# nothing to follow: a default or NOT NULL changes no value).
STEPS = [
    ("ADD COLUMN color text NOT NULL DEFAULT 'red'", "read again"),
    ("DROP COLUMN legacy", "in place"),
    ("RENAME COLUMN name TO title", "read again"),
    ("ALTER COLUMN price TYPE numeric(12,1)", "read again"),  # rounds every stored value
    ("ADD COLUMN size int", "read again"),
    # Published as PostgreSQL 18 publishes them (publish_generated_columns = stored).
    ("ADD COLUMN total numeric GENERATED ALWAYS AS (price * 2) STORED", "read again"),
    ("ADD COLUMN added_at timestamptz DEFAULT clock_timestamp()", "read again"),  # volatile
    ("ADD COLUMN code text DEFAULT '7'", "read again"),
    (
        "ALTER COLUMN code DROP DEFAULT, ALTER COLUMN code TYPE int USING code::int + 1",
        "read again",
    ),
    ("ALTER COLUMN size SET DEFAULT 3", None),
    ("ALTER COLUMN color DROP NOT NULL", None),
    # What a copy cannot take as it comes: a name that needs quoting, a type SQLite has no
    # home for (held as text), a column renamed to a dropped column's name.
    ('ADD COLUMN "we""ird col" text DEFAULT \'x\'', "read again"),
    ("ADD COLUMN tags text[] DEFAULT '{a,b}', ADD COLUMN spot point DEFAULT '(1,2)'", "read again"),
    ("RENAME COLUMN title TO legacy", "read again"),
]
LOADED = "after its schema changed"
DROPPED = "dropped at"
CAUGHT_UP = "caught up:"
LEFT_OUT = "is left out of the copy"


class NoteWriter(Background):
    """~50 single-row transactions a second on the columns no step changes (the key and
    `note`): inserts, which take every other column's default, and updates."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.transactions = 0

    def _run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_id = 10_000
            while not self.done.is_set():
                if rng.random() < 0.3:
                    conn.execute("INSERT INTO shop (id, note) VALUES (%s, 'new')", (next_id,))
                    next_id += 1
                else:
                    conn.execute(
                        "UPDATE shop SET note = %s WHERE id = %s",
                        (f"n{self.transactions}", rng.randint(1, 500)),
                    )
                self.transactions += 1
                time.sleep(0.02)


def test_every_schema_change_ends_in_an_exact_copy(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    pg.execute(
        "CREATE TABLE shop (id int PRIMARY KEY, name text, price numeric(12,2), legacy text,"
        " note text);"
        "INSERT INTO shop SELECT g, 'name ' || g, g * 1.25, 'old', 'n'"
        " FROM generate_series(1, 500) g"
    )
    replicator = services("replicator", pg, nats_url, table="shop").wait_healthy()
    services("snapshotter", pg, nats_url, table="shop").wait_healthy()
    path, log, env = tmp_path / "copy.db", tmp_path / "replica.log", replicator.env

    def said(text: str) -> int:
        """How often the replica's log (every start of it) says `text`."""
        return log.read_text().count(text) if log.exists() else 0

    # The library's MemoryCopy follows the same changes in this process, all the way.
    memory = FollowedCopy(nats_url, ["shop"], MemoryCopy).start()
    with NoteWriter(pg.url) as writer:
        for ddl, how in STEPS:
            # Following when the change comes (else the copy loads the new shape at start).
            caught = said(CAUGHT_UP)
            replica = start_replica(env, path, log, "shop")
            wait_for(
                lambda n=caught: said(CAUGHT_UP) > n,
                60,
                "the copy to follow",
                replica,
            )
            # What the replica says once it followed the step (nothing for a default or NOT
            # NULL: no value changes, nothing to wait for).
            marker = {"read again": LOADED, "in place": DROPPED}.get(how or "")
            before = said(marker) if marker else 0
            pg.execute(f"ALTER TABLE shop {ddl}")
            if marker:
                wait_for(
                    lambda m=marker, n=before: said(m) > n,
                    60,
                    f"the copy to follow {ddl} ({how})",
                    replica,
                )
            assert replica.terminate() == 0, replica.output()[-3000:]
            result = bridge("verify", "shop", "--sqlite", str(path), env=env)
            assert result.returncode == 0 and ": equal" in result.stdout, (
                ddl,
                result.stdout,
                result.stderr[-3000:],
            )
    assert writer.transactions > 200, writer.transactions
    memory.catch_up(pg, replicator)
    memory.stop()
    # A copy bootstrapped now, from a new snapshot, is what the table is: the MemoryCopy that
    # followed every step must hold exactly that.
    fresh = FollowedCopy(nats_url, ["shop"], MemoryCopy, reuse_snapshot=False).start()
    wait_for(fresh.loaded.is_set, 60, "a fresh copy")
    fresh.stop()

    def rows(copy: FollowedCopy) -> list[dict[str, object]]:
        return sorted(copy.copy.tables["public.shop"], key=lambda row: row["id"])

    assert rows(memory) == rows(fresh)
    (version,) = pg.execute("SHOW server_version_num")[0]
    generated = ["total"] if int(version) >= 180000 else []  # published from 18 on
    assert list(rows(fresh)[0]) == [
        "id", "legacy", "price", "note", "color", "size", *generated, "added_at", "code",
        'we"ird col', "tags", "spot",
    ]  # fmt: skip


def _copy_follows(
    pg: Database,
    env: dict[str, str],
    path: Path,
    log: Path,
    ddl: str,
    then: str = "",
    marker: str = LOADED,
) -> str:
    """`bridge replica shop` caught up, then `ddl` (and `then`) in PostgreSQL: the replica's
    new output once it said `marker` (by default: it read the table again), after which
    verify must say equal (or, for a table the copy no longer holds, nothing)."""
    before = log.read_text() if log.exists() else ""
    replica = start_replica(env, path, log, "shop")
    wait_for(
        lambda: replica.output().count(CAUGHT_UP) > before.count(CAUGHT_UP),
        60,
        "the copy to follow",
        replica,
    )
    pg.execute(ddl)
    if then:
        pg.execute(then)
    wait_for(
        lambda: replica.output().count(marker) > before.count(marker),
        60,
        f"the copy to follow {ddl}: {marker!r}",
        replica,
    )
    assert replica.terminate() == 0
    if marker != LEFT_OUT:
        result = bridge("verify", "shop", "--sqlite", str(path), env=env)
        assert result.returncode == 0 and ": equal" in result.stdout, (ddl, result.stdout)
    return replica.output()[len(before) :]


def test_the_ddl_itself_announces_a_change_no_write_follows(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """With the event trigger (a superuser role, as here), a schema change is on the stream
    at the DDL: the copy is exact without any write after it, also after a rewrite that keeps
    the shape (nothing else in the WAL says that one)."""
    pg.execute(
        "CREATE TABLE shop (id int PRIMARY KEY, note text);"
        "INSERT INTO shop SELECT g, 'n' || g FROM generate_series(1, 300) g"
    )
    replicator = services("replicator", pg, nats_url, table="shop").wait_healthy()
    services("snapshotter", pg, nats_url, table="shop").wait_healthy()
    assert "announced at the DDL" in replicator.output()
    path, log, env = tmp_path / "copy.db", tmp_path / "replica.log", replicator.env
    said = _copy_follows(pg, env, path, log, "ALTER TABLE shop ADD COLUMN color text DEFAULT 'red'")
    assert "columns at" in said
    said = _copy_follows(
        pg, env, path, log, "ALTER TABLE shop ALTER note TYPE text USING upper(note)"
    )
    assert "rewritten at" in said
    changes = [e for s, _, e in stream_messages(nats_url, commits=True) if s == "cdc.shop.schema"]
    ddl = [e for e in changes if e["source"] == "ddl"]
    assert [(e["command"], e["rewritten"]) for e in ddl] == [
        ("ALTER TABLE", False),
        ("ALTER TABLE", True),
    ]
    assert [c["name"] for c in ddl[0]["columns"]] == ["id", "note", "color"]
    assert ddl[0]["columns"][0]["key"] and not ddl[0]["columns"][1]["key"]
    _copy_follows(pg, env, path, log, "DROP TABLE shop", marker=LEFT_OUT)
    copy = SqliteCopy(path)
    assert not copy.has_table("public.shop") and "dropped at" in copy.left_out()["public.shop"]
    copy.close()


def _without_a_superuser(pg: Database, nats_url: str, services: Callable[..., Service]) -> Service:
    """The replicator and the snapshotter as a role that owns `shop` (300 rows) and may
    replicate, but is no superuser: no event trigger."""
    role = f"bridge_{pg.name}"  # roles are the server's, not the test database's
    pg.execute(
        f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'bridge-pw';"
        f'GRANT CREATE ON DATABASE "{pg.name}" TO {role};'
        "CREATE TABLE shop (id int PRIMARY KEY, note text);"
        f"ALTER TABLE shop OWNER TO {role};"
        "INSERT INTO shop SELECT g, 'n' || g FROM generate_series(1, 300) g"
    )
    url = make_conninfo(pg.url, user=role, password="bridge-pw")
    replicator = services("replicator", pg, nats_url, table="shop", database_url=url)
    replicator.wait_healthy()
    services("snapshotter", pg, nats_url, table="shop", database_url=url).wait_healthy()
    return replicator


def test_without_a_superuser_a_rename_is_said_on_the_old_name_at_the_next_change(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """Logical decoding describes a renamed table with its next change: the schema change is
    published on the new name's subject and on the old one's (each with its own Msg-Id, so
    JetStream keeps both), and a copy that follows the old name drops it and says why."""
    replicator = _without_a_superuser(pg, nats_url, services)
    path, log, env = tmp_path / "copy.db", tmp_path / "replica.log", replicator.env
    said = _copy_follows(
        pg, env, path, log, "ALTER TABLE shop RENAME TO shop_old",
        then="UPDATE shop_old SET note = 'x' WHERE id = 1", marker=LEFT_OUT,
    )  # fmt: skip
    assert "renamed to public.shop_old at" in said, said
    changes = [
        (s, h["Nats-Msg-Id"], e["table"])
        for s, h, e in stream_messages(nats_url, commits=True)
        if s.endswith(".schema")
    ]
    renamed = [c for c in changes if c[2] == "shop_old"]
    assert [s for s, _, _ in renamed] == ["cdc.shop_old.schema", "cdc.shop.schema"], changes
    assert renamed[1][1] == renamed[0][1] + ":was", renamed


def test_without_a_superuser_the_next_change_announces_it(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """A role that may not create event triggers: the replicator says what it falls back to
    and how to have the trigger; the schema change comes with the table's next write, and the
    copy ends exact all the same. Then a superuser installs the trigger from
    `bridge ddl-trigger-sql`, and the next change is announced at the DDL."""
    replicator = _without_a_superuser(pg, nats_url, services)
    assert "announced with each table's next change after the DDL" in replicator.output()
    assert "ddl-trigger-sql" in replicator.output()
    path, log, env = tmp_path / "copy.db", tmp_path / "replica.log", replicator.env
    said = _copy_follows(
        pg, env, path, log,
        "ALTER TABLE shop ADD COLUMN color text NOT NULL DEFAULT 'red'",
        then="UPDATE shop SET note = 'x' WHERE id = 1",
    )  # fmt: skip
    assert "columns at" in said
    trigger_sql = bridge("ddl-trigger-sql", env=env)
    assert trigger_sql.returncode == 0, trigger_sql.stderr
    pg.execute(trigger_sql.stdout)
    _copy_follows(pg, env, path, log, "ALTER TABLE shop ADD COLUMN size int DEFAULT 3")
    sources = [
        e["source"] for s, _, e in stream_messages(nats_url, commits=True)
        if s == "cdc.shop.schema"
    ]  # fmt: skip
    assert "relation" in sources and sources[-1] == "ddl", sources


def test_a_copy_builds_a_table_from_its_snapshot_s_own_schema_document(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    """An ALTER TABLE that commits after the snapshot's read and before the snapshotter
    publishes the schema document to KV (it stalls 3 s there) leaves KV describing a column no
    snapshot row has. The meta carries the document read under the snapshot: the copy builds
    the table in the rows' shape, then the change at its place in the stream makes it read the
    table again, every row with the column's default. (From KV, the copy would hold the column
    NULL in every row and see nothing to follow.)"""
    pg.execute(
        "CREATE TABLE shop (id int PRIMARY KEY, note text);"
        "INSERT INTO shop SELECT g, 'n' || g FROM generate_series(1, 2000) g"
    )
    replicator = services("replicator", pg, nats_url, table="shop").wait_healthy()
    snapshotter = services(
        "snapshotter", pg, nats_url, table="shop", chunk_size=100,
        failpoints="snapshot.after_read=sleep:3",
    ).wait_healthy()  # fmt: skip

    def chunks() -> int:
        init = stream_messages(nats_url, "INIT")
        return sum(1 for s, _, _ in init if s.startswith("init.snap.shop."))

    memory = FollowedCopy(nats_url, ["shop"], MemoryCopy).start()
    wait_for(lambda: chunks() == 20, 30, "the snapshot's chunks", snapshotter)
    pg.execute("ALTER TABLE shop ADD COLUMN color text NOT NULL DEFAULT 'red'")

    def colored() -> bool:
        try:
            rows = list(memory.copy.tables["public.shop"])
        except (KeyError, RuntimeError):  # not loaded yet, or changing under this thread
            return False
        return len(rows) == 2000 and all(row.get("color") == "red" for row in rows)

    wait_for(colored, 60, "the copy to read shop again in its new shape", replicator)
    memory.stop()
    init = stream_messages(nats_url, "INIT", commits=True)
    meta = next(m for s, _, m in init if s == "init.meta.shop")
    assert [c["name"] for c in meta["schema_document"]["columns"]] == ["id", "note"], meta
    stored = [m for s, _, m in init if s == "init.schema.shop"][-1]
    assert [c["name"] for c in stored["columns"]] == ["id", "note", "color"], stored


def test_keys_identity_row_filters_and_publication_membership_are_followed(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """Under a writer: a new primary key, REPLICA IDENTITY FULL and a row filter make the copy
    read the table again; a TRUNCATE empties it; taken out of the publication, the copy drops
    it, put back, loads it; renamed (the writer stopped), the copy drops it and says why.
    Verify says equal wherever PostgreSQL still publishes the table. (DROP TABLE:
    test_the_ddl_itself_announces_a_change_no_write_follows.)"""
    pg.execute(
        "CREATE TABLE shop (id int PRIMARY KEY, note text NOT NULL);"
        "INSERT INTO shop SELECT g, 'n' || g FROM generate_series(1, 300) g"
    )
    replicator = services("replicator", pg, nats_url, table="shop").wait_healthy()
    services("snapshotter", pg, nats_url, table="shop").wait_healthy()
    path, log, env = tmp_path / "copy.db", tmp_path / "replica.log", replicator.env
    publication = "bridge_pub"  # the default

    def follows(ddl: str, marker: str = LOADED) -> str:
        return _copy_follows(pg, env, path, log, ddl, marker=marker)

    def left_out() -> dict[str, str]:
        copy = SqliteCopy(path)
        try:
            assert not copy.has_table("public.shop")
            return copy.left_out()
        finally:
            copy.close()

    with NoteWriter(pg.url) as writer:
        said = follows("ALTER TABLE shop DROP CONSTRAINT shop_pkey, ADD PRIMARY KEY (id, note)")
        assert "key at" in said, said
        assert "replica identity at" in follows("ALTER TABLE shop REPLICA IDENTITY FULL")
        follows(f"ALTER PUBLICATION {publication} SET TABLE shop WHERE (id % 2 = 0)")
        follows("TRUNCATE shop", marker=CAUGHT_UP)
        follows(f"ALTER PUBLICATION {publication} DROP TABLE shop", marker=LEFT_OUT)
        assert "taken out of the publication at" in left_out()["public.shop"]
        follows(f"ALTER PUBLICATION {publication} ADD TABLE shop")
    assert writer.transactions > 100, writer.transactions
    follows("ALTER TABLE shop RENAME TO shop_old", marker=LEFT_OUT)
    assert "renamed to public.shop_old at" in left_out()["public.shop"]


def test_without_a_superuser_a_table_taken_out_of_the_publication_leaves_the_copy(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """The replicator says the changes it makes to the publication it manages itself (in
    the transaction of its ALTER PUBLICATION), so with no event trigger too a copy learns that
    a table left `--table`: restarted with another table, the copy following `shop` drops
    it and says why."""
    replicator = _without_a_superuser(pg, nats_url, services)
    role = f"bridge_{pg.name}"
    pg.execute(f"CREATE TABLE other (id int PRIMARY KEY); ALTER TABLE other OWNER TO {role}")
    path, log = tmp_path / "copy.db", tmp_path / "replica.log"
    replica = start_replica(replicator.env, path, log, "shop")
    wait_for(lambda: CAUGHT_UP in replica.output(), 60, "the copy to follow", replica)
    assert replicator.terminate() == 0
    url = make_conninfo(pg.url, user=role, password="bridge-pw")
    services("replicator", pg, nats_url, table="other", database_url=url).wait_healthy()
    wait_for(lambda: LEFT_OUT in replica.output(), 60, "the copy to drop shop", replica)
    assert replica.terminate() == 0
    copy = SqliteCopy(path)
    assert not copy.has_table("public.shop")
    assert "taken out of the publication at" in copy.left_out()["public.shop"]
    copy.close()


def test_a_partitioned_table_is_followed_through_its_schema_changes(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    """A partitioned table streams as its root (publish_via_partition_root): an ALTER TABLE
    on the root reaches every partition, and the copy, which knows the root only, reads it
    again in the new shape, a stored generated column's values too."""
    pg.execute(
        "CREATE TABLE shop (id int, region text, note text, PRIMARY KEY (id, region))"
        " PARTITION BY LIST (region);"
        "CREATE TABLE shop_eu PARTITION OF shop FOR VALUES IN ('eu');"
        "CREATE TABLE shop_us PARTITION OF shop FOR VALUES IN ('us');"
        "INSERT INTO shop SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'n' || g"
        " FROM generate_series(1, 300) g"
    )
    replicator = services("replicator", pg, nats_url, table="shop").wait_healthy()
    services("snapshotter", pg, nats_url, table="shop").wait_healthy()
    path, log, env = tmp_path / "copy.db", tmp_path / "replica.log", replicator.env
    _copy_follows(pg, env, path, log, "ALTER TABLE shop ADD COLUMN color text DEFAULT 'red'")
    _copy_follows(
        pg, env, path, log,
        "ALTER TABLE shop ADD COLUMN tag text GENERATED ALWAYS AS (region || '-' || id) STORED",
    )  # fmt: skip
    _copy_follows(pg, env, path, log, "ALTER TABLE shop DROP COLUMN note", marker=DROPPED)
    copy = SqliteCopy(path)
    (version,) = pg.execute("SHOW server_version_num")[0]
    generated = ["tag"] if int(version) >= 180000 else []  # published from 18 on
    assert copy.columns("public.shop") == ["id", "region", "color", *generated]
    copy.close()
