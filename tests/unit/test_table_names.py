import pytest

from shared.tables import TableName, TableNameError


@pytest.mark.parametrize(
    ("text", "schema", "name"),
    [
        ("users", "public", "users"),
        ("Users", "public", "users"),
        ("sales.orders", "sales", "orders"),
        ('"Odd.Name"', "public", "Odd.Name"),
        ('public."Odd.Name"', "public", "Odd.Name"),
        ('"My Schema"."T"', "My Schema", "T"),
        ('"a""b"', "public", 'a"b'),
    ],
)
def test_postgres_identifier_rules(text: str, schema: str, name: str) -> None:
    assert TableName.parse(text) == TableName(schema, name)


@pytest.mark.parametrize("bad", ["", "a.b.c", '"open', "a.", ".b"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(TableNameError, match="not a table name"):
        TableName.parse(bad)
