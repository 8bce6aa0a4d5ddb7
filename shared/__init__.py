"""Code shared by the replicator, snapshotter and admin services."""
