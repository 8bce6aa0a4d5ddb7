"""The compiled hot path a test module holds to its pure-Python reference (shared/compiled).

`built(module)` at a test module's top: the module, or the test module skipped where it is not
built here, or failed where `BRIDGE_TEST_REQUIRE_COMPILED=1` says it must be (CI sets it)."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest


def built(module: ModuleType | None) -> Any:
    if module is not None:
        return module
    if os.environ.get("BRIDGE_TEST_REQUIRE_COMPILED", "").strip() not in ("", "0"):
        raise RuntimeError(
            "the compiled hot path is not built (or BRIDGE_PURE_PYTHON is set) and "
            "BRIDGE_TEST_REQUIRE_COMPILED=1: make install builds it"
        )
    pytest.skip("the compiled hot path is not built here", allow_module_level=True)
