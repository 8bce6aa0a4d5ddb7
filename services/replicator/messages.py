"""Messages between the replicator's actors. Each carries a batch, never a single row."""

from __future__ import annotations

from dataclasses import dataclass

from services.replicator.events import Outgoing
from shared.lsn import Lsn


@dataclass(frozen=True, slots=True)
class Frames:
    """Reader → decoder: XLogData CopyData messages in WAL order, as read (the decoder parses
    them: the reader's thread only reads)."""

    batch_no: int
    frames: list[bytes]
    cost: int
    """Budget spent reading them (bytes), given back when the batch is acknowledged."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Decoder → publisher: the messages made from one `Frames` batch."""

    batch_no: int
    messages: list[Outgoing]
    cost: int
    confirm_lsn: Lsn | None
    """End of the last transaction completed in this batch: safe to confirm once every
    message of this and every earlier batch is acknowledged."""


@dataclass(frozen=True, slots=True)
class Acked:
    """Publisher → reader: batch `batch_no` and all before it are stored in JetStream."""

    batch_no: int
    confirm_lsn: Lsn | None


@dataclass(frozen=True, slots=True)
class Poll:
    """Reader → itself: read the socket again."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Supervisor → reader: stop reading; keep confirming what gets acknowledged."""
