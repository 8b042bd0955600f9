"""cdc-bridge: relay committed outbox inserts from PostgreSQL's WAL to NATS JetStream."""

__version__ = "0.1.0"
