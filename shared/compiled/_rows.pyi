from collections.abc import Callable, Sequence
from typing import Any

KIND_STR: int
KIND_INT: int
KIND_FLOAT: int
KIND_BOOL: int
KIND_BYTEA: int

class RowShape:
    width: int
    def __init__(self, names: Sequence[str], kinds: bytes, keys: bytes | None = None) -> None: ...

class ChangeShape(RowShape):
    subjects: tuple[bytes, bytes, bytes]
    token: str
    def __init__(
        self,
        names: Sequence[str],
        kinds: bytes,
        keys: bytes,
        heads: Sequence[bytes],
        subjects: Sequence[bytes],
        token: str,
    ) -> None: ...

def encode_changes(
    frames: list[bytes],
    start: int,
    shapes: dict[int, ChangeShape],
    tx_middle: bytes,
    tx_time: bytes,
    ordinal: int,
    msg_id_prefix: bytes,
    counts: dict[str, int],
    limit: int,
    out: list[Any],
    make: Callable[[bytes, bytes, bytes], Any],
) -> tuple[int, int]: ...
def pack_copy_lines(lines: list[bytes], shape: RowShape) -> list[bytes] | None: ...
def take_copy_lines(
    get_copy_data: Callable[[int], tuple[int, Any]], block: list[bytes], limit: int
) -> int: ...
