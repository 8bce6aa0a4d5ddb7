"""Real servers for the tests (docs/architecture.md, "Testing"): private PostgreSQL and
nats-server instances."""
