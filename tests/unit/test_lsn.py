import pytest

from shared.lsn import ZERO, Lsn, LsnError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/16B3748", 0x16B3748),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
        ("a/b", (10 << 32) | 11),
    ],
)
def test_parse_and_format_round_trip(text: str, value: int) -> None:
    lsn = Lsn.parse(text)
    assert lsn == value
    assert str(lsn) == text.upper()
    assert Lsn.parse(str(lsn)) == lsn


@pytest.mark.parametrize("bad", ["", "16", "/1", "1/", "G/0", "1/2/3", "123456789/0", "x/y"])
def test_bad_text_is_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(LsnError, match="not an LSN"):
        Lsn.parse(bad)


def test_out_of_range_is_refused() -> None:
    with pytest.raises(LsnError):
        Lsn(-1)
    with pytest.raises(LsnError):
        Lsn(2**64)


def test_order_and_arithmetic() -> None:
    a, b = Lsn.parse("0/100"), Lsn.parse("1/0")
    assert ZERO < a < b
    assert b - a == 2**32 - 0x100
    assert isinstance(a + 16, Lsn) and str(a + 16) == "0/110"
    assert max(a, b) is b
    assert repr(a) == "Lsn('0/100')"
