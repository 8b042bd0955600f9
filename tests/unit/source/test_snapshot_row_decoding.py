"""Snapshot messages (core/snapshots.py) -> R changes, and what the config reserves."""

from __future__ import annotations

import json

import pytest

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.problems import ConfigError
from cdc_bridge.core.changes import ChangeColumn
from cdc_bridge.core.snapshots import SNAPSHOT_PREFIX
from cdc_bridge.routing.change_events import change_json
from cdc_bridge.source.decoding import DecodeError
from cdc_bridge.source.decoding.snapshot_rows import snapshot_row
from cdc_bridge.source.decoding.wal2json import wal2json_options


def message(**overrides: object) -> bytes:
    document: dict[str, object] = {
        "v": 1,
        "snapshot": "s1",
        "schema": "public",
        "table": "tickets",
        "key": ["id"],
        "columns": [
            ["id", "integer", 23, "7"],
            ["estimate", "numeric(6,2)", 1700, "NaN"],
            ["attachment", "bytea", 17, "\\x00ff"],
            ["mood", '"Mood"', 16384, None],
        ],
    }
    document.update(overrides)
    return json.dumps(document).encode()


def test_a_snapshot_row_is_the_insert_of_its_columns_with_action_r() -> None:
    row = snapshot_row(message())
    change = row.change
    assert (change.action, change.table, change.identity) == ("R", "public.tickets", ())
    assert change.columns == (
        ChangeColumn("id", "integer", 23, "7"),
        ChangeColumn("estimate", "numeric(6,2)", 1700, None),  # NaN: null, as wal2json
        ChangeColumn("attachment", "bytea", 17, b"\x00\xff"),
        ChangeColumn("mood", "Mood", 16384, None),  # wal2json's unquoted type name
    )
    assert row.msg_id == "s1:public.tickets:7"
    assert json.loads(change_json(change))["action"] == "R"
    assert "identity" not in json.loads(change_json(change))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not json", "snapshot row is not JSON"),
        (b"[1]", "not a JSON object"),
        (message(v=2), "format version 2"),
        (message(snapshot="a:b"), "invalid snapshot id"),
        (message(schema=""), "no 'schema' string"),
        (message(columns=[]), "no columns"),
        (message(columns=[["id", "integer", "23", "7"]]), "malformed column"),
        (message(key=["nope"]), "names no key among its columns"),
        (message(columns=[["id", "bytea", 17, "\\xzz"]], key=["id"]), "not bytea text"),
    ],
)
def test_what_is_not_a_snapshot_row_says_why(content: bytes, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        snapshot_row(content)


def test_wal2json_asks_for_snapshot_rows_beside_the_message_prefixes() -> None:
    options = dict(wal2json_options(("public.outbox",), ("orders",), ("public.tickets",)))
    assert options["add-msg-prefixes"] == f"orders,{SNAPSHOT_PREFIX}"
    # without change tables no snapshot row is wanted
    options = dict(wal2json_options(("public.outbox",), ("orders",)))
    assert options["add-msg-prefixes"] == "orders"


CONFIG = """\
postgres: {dsn: "postgresql://app@127.0.0.1:5432/app"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
outbox: {table: public.outbox, message_prefixes: [orders, cdc_bridge.snapshot]}
routes:
  - subject: "events.x"
"""


def test_the_snapshot_prefix_is_reserved() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(CONFIG, source="c.yaml", env={})
    [problem] = caught.value.problems
    assert "outbox.message_prefixes" in problem
    assert "cdc_bridge.snapshot is reserved for the rows of `cdc-bridge snapshot`" in problem
