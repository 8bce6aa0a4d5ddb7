"""The replicator: pgoutput changes from a logical replication slot to JetStream."""
