from collections.abc import Sequence
from typing import Any

def chain(
    messages: Sequence[Any], start: int, end: int, expected: int, previous: bytes, reply: bytes
) -> bytes: ...
def read_messages(
    view: bytes, pos: int, sid: bytes, subjects: dict[bytes, bytes]
) -> tuple[list[tuple[bytes, int, int, int, bytes]], int, bool]: ...
