"""Work an e2e test keeps running while it acts (a writer, a reader of a copy): a thread that
runs `_run` until the `with` block ends."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    join_seconds = 30.0

    def __init__(self) -> None:
        self.done = threading.Event()  # `_run` returns once this is set
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(self.join_seconds)
