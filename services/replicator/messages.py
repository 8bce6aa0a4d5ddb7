"""Messages between the replicator's actors. Each carries a batch, never a single row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka

from services.replicator.events import Outgoing


@dataclass(frozen=True, slots=True)
class Frames:
    """Reader → decoder: XLogData CopyData messages in WAL order, as read (the decoder parses
    them: the reader's thread only reads)."""

    batch_no: int
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Publish:
    """Decoder → publisher: the messages made from one `Frames` batch."""

    batch_no: int
    messages: list[Outgoing]


@dataclass(frozen=True, slots=True)
class Acked:
    """Publisher → reader: batch `batch_no` and all before it are stored in JetStream (the
    reader's `Progress` turns that into a position to confirm)."""

    batch_no: int


@dataclass(frozen=True, slots=True)
class AttachReader:
    """Pipeline → publisher: where `Acked` goes (the reader starts after the publisher)."""

    ref: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Poll:
    """Reader → itself: read the socket again."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Supervisor → reader: stop reading; keep confirming what gets acknowledged."""
