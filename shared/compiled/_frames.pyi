from collections.abc import Sequence
from typing import Any

def chain(
    messages: Sequence[Any], start: int, end: int, expected: int, previous: bytes, reply: bytes
) -> bytes: ...
