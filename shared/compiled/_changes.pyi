from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

def read_change(raw: bytes) -> dict[str, Any] | None: ...
def read_insert(
    raw: bytes,
    table: str,
    seq: int,
    make: Callable[[str, dict[str, Any], int, str, str, bool], T],
) -> T | dict[str, Any] | None: ...
