"""Helpers for the tests that run the bridge on both output plugins.

The devstack's PostgreSQL allows wal2json as well as pgoutput (cdc_bridge.dev.devstack adds it
on builds with an output plugin allow-list), so these tests use the session server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from support.bridge import BridgeProcess, log_event
from support.nats_helpers import StreamMessage
from support.outbox import raw_stored_headers, wait_for_ids

PLUGINS = ("pgoutput", "wal2json")
STARTUP_TIMEOUT = 30.0


def run_statements(dsn: str, *statements: str) -> None:
    """Run statements in autocommit mode (DDL, settings)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def comparable(nats_url: str, stream: str, message: StreamMessage) -> tuple[str, bytes, bytes]:
    """Subject, body and the raw header block without its Cdc-Source line and the order
    guard's expectation (which form it takes depends on ack timing: ordering.py)."""
    block = raw_stored_headers(nats_url, stream, message.seq)
    lines = [
        line
        for line in block.split(b"\r\n")
        if not line.startswith((b"Cdc-Source:", b"Nats-Expected-Last-"))
    ]
    return message.subject, message.data, b"\r\n".join(lines)


def stream_through_both_plugins(
    make_bridge: Callable[[Mapping[str, Any]], BridgeProcess],
    config_for: Callable[[str, str], Mapping[str, Any]],
    servers: Mapping[str, str],
    stream: str,
    workload: Callable[[], str],
) -> dict[str, list[StreamMessage]]:
    """One bridge per plugin (``config_for(nats_url, plugin)``, each on its own NATS),
    then the workload; returns each stream once it holds the workload's last id."""
    bridges = [make_bridge(config_for(url, plugin)) for plugin, url in servers.items()]
    for bridge in bridges:
        bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
    final = workload()
    return {
        plugin: wait_for_ids(url, stream, [final], timeout=30) for plugin, url in servers.items()
    }
