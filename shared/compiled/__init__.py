"""The hot loops' implementation: compiled (Cython, built by `make install` and the Docker
image's build stage where a C compiler is) or the pure-Python reference.

`rows` (row bytes → MessagePack, `_rows.pyx`), `frames` (the publisher's HPUB frames,
`_frames.pyx`) and `changes` (a change event's bytes → what a copy reads, `_changes.pyx`) are
the compiled modules, or None when they are not built here or
`BRIDGE_PURE_PYTHON=1` asks for the reference (CI runs the encoder and decoder tests once
so); `HOT_PATH` names the one that runs (`bridge --version`, the services' /status). The
callers keep the pure path as it was and ask the compiled one first; `rows` returns None for
anything it does not take exactly as the reference does, so both give the same bytes
(tests/unit/test_compiled_rows.py, test_compiled_frames.py, test_compiled_changes.py).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Final

PURE_PYTHON_VARIABLE: Final = "BRIDGE_PURE_PYTHON"


def _load() -> tuple[ModuleType, ModuleType, ModuleType] | tuple[None, None, None]:
    if os.environ.get(PURE_PYTHON_VARIABLE, "").strip() not in ("", "0"):
        return None, None, None
    try:
        from shared.compiled import _changes, _frames, _rows
    except ImportError:  # not built here: the pure-Python path
        return None, None, None
    return _rows, _frames, _changes


rows, frames, changes = _load()
HOT_PATH: Final = "compiled" if rows is not None else "pure-python"
