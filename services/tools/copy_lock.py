"""One process at a time on a copy: `bridge replica` holds the lock while it runs, `bridge
verify` takes it to move the copy to the LSN it compares at."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class CopyInUse(RuntimeError):
    pass


def lock_copy(path: Path, command: str) -> IO[str]:
    """An exclusive lock on `path` (a `.lock` file beside it) for as long as the returned file
    stays open; CopyInUse names the process that holds it."""
    lock_path = path.with_name(path.name + ".lock")
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CopyInUse(f"the copy {path} is in use by {holder}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"`bridge {command}` (pid {os.getpid()})")
    handle.flush()
    return handle
