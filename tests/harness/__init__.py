"""Real servers for the tests (DESIGN §5): private PostgreSQL and nats-server instances."""
