"""OIDs of the built-in PostgreSQL types the value codec treats specially.

Built-in type OIDs are fixed in `pg_type.dat` and never change between releases.
"""

BOOL = 16
BYTEA = 17
CHAR = 18
NAME = 19
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
OID = 26
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
BPCHAR = 1042
VARCHAR = 1043
NUMERIC = 1700
JSONB = 3802

INTEGERS = frozenset({INT2, INT4, INT8, OID})
FLOATS = frozenset({FLOAT4, FLOAT8})
TEXTS = frozenset({TEXT, VARCHAR, BPCHAR, NAME, CHAR})
JSONS = frozenset({JSON, JSONB})
