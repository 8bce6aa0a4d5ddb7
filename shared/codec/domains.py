"""Domains are typed like their base type (a domain over int is an int on the wire).

pgoutput and the catalog both name a column's type by the domain's OID, and so the value codec
is given the base type's OID instead, resolved through every level of domain with one query.
Built-in types below FirstGenbkiObjectId (10000) are never domains, so only OIDs above it are
looked up.
"""

from __future__ import annotations

from collections.abc import Iterable

FIRST_NON_BUILTIN_OID = 10000

BASE_TYPES_QUERY = """
WITH RECURSIVE chain(start, oid, typtype, typbasetype) AS (
    SELECT t.oid, t.oid, t.typtype, t.typbasetype FROM pg_type t WHERE t.oid = ANY(%s::oid[])
    UNION ALL
    SELECT c.start, t.oid, t.typtype, t.typbasetype
    FROM chain c JOIN pg_type t ON t.oid = c.typbasetype WHERE c.typtype = 'd'
)
SELECT start::int, oid::int FROM chain WHERE typtype <> 'd'
"""


def oids_to_resolve(oids: Iterable[int]) -> list[int]:
    """The OIDs that may be domains (the argument of BASE_TYPES_QUERY)."""
    return sorted({oid for oid in oids if oid >= FIRST_NON_BUILTIN_OID})


def with_base_types(oids: Iterable[int], resolved: Iterable[tuple[int, int]]) -> list[int]:
    """`oids` with each domain replaced by its base type (rows of BASE_TYPES_QUERY)."""
    base = dict(resolved)
    return [base.get(oid, oid) for oid in oids]
