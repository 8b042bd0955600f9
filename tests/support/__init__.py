"""Helpers shared by the tests: waiting with deadlines, a bridge subprocess, NATS readers."""
