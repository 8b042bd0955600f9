"""examples/tickets: the outage scenario of demo_outage.py, on the test suite's servers.

The bridge runs the example's own bridge.yaml; the service and the consumer run as the
demo runs them (subprocesses); this test's nats-server is stopped and started in the
middle. Afterwards the consumer's copy must equal the service's tickets, and the stream
must hold every outbox row's event exactly once.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import yaml
from support.bridge import REPO_ROOT, BridgeProcess, log_event
from support.outbox import duplicated_ids, message_ids, wait_for_ids

from cdc_bridge.config.load import load_config
from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer

MakeBridge = Callable[..., BridgeProcess]
EXAMPLE = REPO_ROOT / "examples" / "tickets"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tickets_demo_outage", EXAMPLE / "demo_outage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def example_config(unique_name: str) -> dict[str, Any]:
    """bridge.yaml as shipped, with this test's slot and publication names."""
    config: dict[str, Any] = yaml.safe_load((EXAMPLE / "bridge.yaml").read_text())
    config["postgres"].update(slot=unique_name, publication=unique_name, status_interval="200ms")
    return config


def test_the_example_config_is_valid() -> None:
    config = load_config(
        EXAMPLE / "bridge.yaml", env={"TICKETS_DSN": "postgresql://x@127.0.0.1/tickets"}
    )
    assert [route.subject for route in config.routes] == [
        "tickets.events.created",
        "tickets.events.updated",
        "tickets.other.{aggregate_type}",
    ]


def test_the_readme_runs_the_pieces_from_the_projects_virtualenv() -> None:
    """Bare `cdc-bridge` or `python` would be whatever the shell finds, if anything."""
    text = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Run the pieces yourself") :]
    block = section[section.index("```sh\n") : section.index("```\n", section.index("```sh\n") + 6)]
    commands = [line.split()[0] for line in block.splitlines()[1:] if line.strip()]
    runs = [c for c in commands if c.endswith(("cdc-bridge", "python"))]
    assert runs and all(c.startswith(".venv/bin/") for c in runs), commands


def test_tickets_written_while_nats_is_down_all_reach_the_consumer(
    pg_dsn: str,
    pg_server: PostgresServer,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
    tmp_path: Path,
) -> None:
    nats_url = isolated_nats_server.url
    bridge = make_bridge(
        example_config(unique_name), env={"TICKETS_DSN": pg_dsn, "NATS_URL": nats_url}
    )
    bridge.wait_for_log(log_event("streaming"), timeout=30)  # slot and stream exist now

    copy_name = f"copy_{unique_name}"  # the consumer's own database
    copy_dsn = pg_server.create_database(copy_name, outbox_schema=False)
    try:
        report = load_demo().run_scenario(
            dsn=pg_dsn,
            copy_dsn=copy_dsn,
            nats_url=nats_url,
            stop_nats=isolated_nats_server.stop,
            start_nats=isolated_nats_server.start,
            work_dir=tmp_path,
            before=4,
            during=12,
            say=print,
        )
        with psycopg.connect(copy_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM cdc_inbox").fetchone()
            inbox_rows = row[0] if row else 0
            parked = conn.execute("SELECT count(*) FROM cdc_inbox_parked").fetchone()
    finally:
        pg_server.drop_database(copy_name)

    assert report.writes_during_outage == 18  # 12 creates, 6 updates: every one succeeded
    assert report.behind_during_outage
    assert report.consumer_tickets == report.service_tickets
    assert len(report.service_tickets) == 16
    closed = [t for t in report.consumer_tickets.values() if t["status"] == "closed"]
    assert len(closed) == 6 and all(t["version"] == 2 for t in closed)

    with psycopg.connect(pg_dsn) as conn:
        outbox_ids = [
            str(row[0]) for row in conn.execute("SELECT id FROM outbox ORDER BY created_at, id")
        ]
    assert len(outbox_ids) == 4 + 1 + 18  # creates and updates, before and during
    messages = wait_for_ids(nats_url, "TICKETS", outbox_ids)
    assert sorted(message_ids(messages)) == sorted(outbox_ids)
    assert duplicated_ids(messages) == {}
    assert inbox_rows == len(outbox_ids) and parked == (0,)  # each event recorded once
    assert {m.subject for m in messages} == {"tickets.events.created", "tickets.events.updated"}
