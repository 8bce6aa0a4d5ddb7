"""The bridge's three services and the `bridge` command line."""
