"""Throwaway local servers (PostgreSQL, nats-server) for `cdc-bridge dev` and the tests,
and the demo producer."""
