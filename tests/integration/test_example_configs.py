"""The example configs of change tables, run as their headers say (issue 29 item 16).

config/changes.yaml, debezium.yaml and cloudevents.yaml each start with the steps to try
them: the SQL files and the `cdc-bridge run`, in order. Here those steps are read from
the header and done in that order against the test PostgreSQL and NATS, and the sample
changes must arrive. Before the fix, sql/changes.sql wrote its changes before the bridge
had a slot, and nothing was published.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import MakeBridge, start_bridge
from support.outbox import stream_messages, wait_for_messages
from support.paths import REPO

# A header step: `psql "$CDC_BRIDGE_DSN" -f a.sql -f b.sql` or `cdc-bridge run --config ...`
_SQL_FILE = re.compile(r"-f (\S+\.sql)")
_RUN = re.compile(r"cdc-bridge run --config (\S+)")

# sql/changes_sample.sql: five changes of public.tickets, one outbox event
SAMPLE_MESSAGES = 6


def header_steps(config_file: Path) -> list[tuple[str, str]]:
    """("sql", path) and ("run", config path) in the order the header lists them."""
    steps: list[tuple[str, str]] = []
    for line in config_file.read_text().splitlines():
        if not line.startswith("#"):
            break  # the header ends where the YAML starts
        command = line.lstrip("# ").split("  #")[0]
        if command.startswith("psql "):
            steps += [("sql", path) for path in _SQL_FILE.findall(command)]
        elif run := _RUN.search(command):
            steps.append(("run", run.group(1)))
    return steps


def config_for_test(config_file: Path, pg_dsn: str, nats_url: str) -> dict[str, Any]:
    """The example as it is, pointed at this test's servers (what CDC_BRIDGE_DSN and
    NATS_URL do for a user), logging JSON for the test to read."""
    config: dict[str, Any] = yaml.safe_load(config_file.read_text())
    config["postgres"]["dsn"] = pg_dsn
    config["nats"]["servers"] = [nats_url]
    config["logging"] = {"format": "json", "level": "info"}
    return config


@pytest.mark.parametrize("example", ["changes", "debezium", "cloudevents"])
def test_the_header_steps_in_order_publish_the_sample_changes(
    example: str, pg_dsn: str, nats_url: str, make_bridge: MakeBridge
) -> None:
    config_file = REPO / "config" / f"{example}.yaml"
    steps = header_steps(config_file)
    assert steps == [
        ("sql", "sql/outbox.sql"),
        ("sql", "sql/changes.sql"),
        ("run", f"config/{example}.yaml"),
        ("sql", "sql/changes_sample.sql"),
    ]
    config = config_for_test(config_file, pg_dsn, nats_url)
    stream = config["nats"]["stream"]["name"]
    bridge = None
    for kind, path in steps:
        if kind == "run":
            bridge = start_bridge(make_bridge, config)
            continue
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute((REPO / path).read_text())
    assert bridge is not None
    messages = wait_for_messages(nats_url, stream, SAMPLE_MESSAGES, timeout=30)
    time.sleep(1.0)  # nothing more comes
    messages = stream_messages(nats_url, stream)
    assert len(messages) == SAMPLE_MESSAGES, [m.subject for m in messages]
    tables = [m.headers.get("Cdc-Table") for m in messages]
    assert tables.count("public.tickets") == 5 and tables.count("public.outbox") == 1, tables
    assert bridge.terminate() == 0


def test_the_schema_file_writes_no_changes() -> None:
    """sql/changes.sql runs before the bridge: every change it made would be lost, so it
    only creates the table; the changes are sql/changes_sample.sql's."""
    statements = [
        line.split()[0].upper()
        for line in (REPO / "sql" / "changes.sql").read_text().splitlines()
        if line.strip() and not line.startswith(("--", " ", ")"))
    ]
    assert statements == ["CREATE"]
