"""The `bridge` tools, beside the three services: `tail`, `snapshot` and `status` for a person
at a console (console.py), `replica` (a live SQLite copy of tables) and `verify` (a copy
compared with PostgreSQL under load), which share the copy's lock (copy_lock.py)."""
