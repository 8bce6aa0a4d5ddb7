"""What following the streams can fail with."""

from __future__ import annotations


class FollowError(RuntimeError):
    """Something the caller must fix: an unknown table, a snapshot the bridge refuses, a table
    whose rows cannot be located."""


class Undecodable(ValueError):
    """A message that is not what the bridge publishes on its subject (anyone on the NATS
    account can publish on the bridge's subjects: one such message is skipped, not fatal)."""
