"""The snapshotter: table schemas and consistent, chunked snapshots on the INIT stream."""
