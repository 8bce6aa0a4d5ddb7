"""Libraries whose private parts the bridge uses, and the release each was tested with.

`shared/nats_frames.py` writes into nats-py's outgoing buffer and hooks its message handler
(`_send_command`, `_flush_pending`, `_process_msg`…); `services/replicator/loop_actor.py`
builds on pykka's `Envelope`. Neither is a public API, so any other release may break them:
pyproject.toml pins exactly these versions, the lock files follow, and
tests/unit/test_pinned_versions.py fails when an install differs.
"""

from __future__ import annotations

import importlib.metadata

PINNED = {"nats-py": "2.16.0", "pykka": "4.5.0"}


def drift() -> list[str]:
    """One line per pinned library whose installed release is not the tested one."""
    found = []
    for name, tested in PINNED.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "none"
        if installed != tested:
            found.append(
                f"{name} {installed} is installed; this release of the bridge uses private "
                f"parts of {name} and was tested with {name} {tested}: install from "
                "requirements.lock (`make install`)"
            )
    return found
