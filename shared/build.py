"""What this install of the bridge is: its version and which hot path runs (`bridge
--version`, each service's `bridge_build_info` metric, the admin's /status)."""

from __future__ import annotations

import importlib.metadata

from shared.compiled import HOT_PATH


def version() -> str:
    try:
        return importlib.metadata.version("pg-nats-bridge")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def describe() -> str:
    """`0.1.0 (compiled hot path)`: the version and `HOT_PATH`."""
    return f"{version()} ({HOT_PATH} hot path)"
