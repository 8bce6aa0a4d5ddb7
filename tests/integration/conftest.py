from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration import scenarios
from tests.integration.capture import Captured


@pytest.fixture(scope="session")
def real_corpus(pg_server: Any) -> list[Captured]:
    """Bytes of every pgoutput message type, as one real server sent them.

    Its database (and the cluster-wide slot names its scenarios use) is gone before any test
    runs, so the per-test scenarios can use the same names."""
    name = pg_server.create_database()
    try:
        with psycopg.connect(pg_server.url(name), autocommit=True) as conn:
            return scenarios.everything(conn, pg_server.url(name))
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def table(pg: Any) -> Any:
    """`t` (1,000 rows) in publication `p`: what the snapshot race tests snapshot."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
    pg.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g")
    pg.execute("CREATE PUBLICATION p FOR TABLE t")
    return pg
