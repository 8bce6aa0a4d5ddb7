"""PostgreSQL log sequence numbers: the consumer library's `Lsn`, which the services share."""

from pg_nats_bridge.lsn import ZERO, Lsn, LsnError, lsn_from_u64, lsn_text

__all__ = ["ZERO", "Lsn", "LsnError", "lsn_from_u64", "lsn_text"]
