"""The main pipeline scenarios with ``postgres.plugin: wal2json``, and an outbox of logical
decoding messages only (``outbox.table: []``) on both plugins.

Same checks as tests/integration/test_pipeline.py's first scenarios. A transaction's
events arrive in commit order, so once the last committed transaction's events are
stored, nothing else is still coming.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from support.bridge import MakeBridge, log_event, start_bridge
from support.outbox import (
    Event,
    bridge_config,
    commit_lsn,
    duplicated_ids,
    insert_event,
    insert_events,
    message_ids,
    wait_for_ids,
    wait_for_slot_past,
)
from support.plugins import PLUGINS, run_statements

from cdc_bridge.core.lsn import parse_lsn


def wal2json_config(dsn: str, nats_url: str, name: str, **overrides: Any) -> dict[str, Any]:
    return bridge_config(dsn, nats_url, name, postgres={"plugin": "wal2json"}, **overrides)

# Debian packages wal2json for the system PostgreSQL only (support/pg_installs.py)
pytestmark = pytest.mark.needs_wal2json


class _Abort(Exception):
    pass


def test_only_committed_transactions_arrive(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    start_bridge(make_bridge, wal2json_config(pg_dsn, nats_url, unique_name))
    committed = insert_events(pg_dsn, [Event(event_type="created"), Event(event_type="updated")])
    with psycopg.connect(pg_dsn) as conn:  # rolled back explicitly
        insert_event(conn, Event(event_type="rolled_back"))
        conn.rollback()
    with (
        psycopg.connect(pg_dsn, autocommit=True) as conn,
        pytest.raises(_Abort),
        conn.transaction(),
    ):  # rolled back by an error
        insert_event(conn, Event(event_type="rolled_back"))
        raise _Abort
    with psycopg.connect(pg_dsn) as conn:  # a savepoint rolled back inside a committed one
        committed.append(insert_event(conn, Event(event_type="before_savepoint")))
        with conn.transaction(force_rollback=True):
            insert_event(conn, Event(event_type="rolled_back"))
        committed.append(insert_event(conn, Event(event_type="after_savepoint")))

    messages = wait_for_ids(nats_url, unique_name.upper(), committed)
    assert message_ids(messages) == committed
    assert [m.subject.rsplit(".", 1)[1] for m in messages] == [
        "created",
        "updated",
        "before_savepoint",
        "after_savepoint",
    ]
    assert [m.headers["Cdc-Index"] for m in messages] == ["0", "1", "0", "1"]
    assert {m.headers["Cdc-Table"] for m in messages} == {"public.outbox"}


def test_interleaved_transactions_arrive_in_commit_order_and_the_slot_follows(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    run_statements(pg_dsn, "CREATE TABLE public.tickets (id serial PRIMARY KEY, title text)")
    start_bridge(make_bridge, wal2json_config(pg_dsn, nats_url, unique_name))
    writers = [psycopg.connect(pg_dsn) for _ in range(3)]
    rows: dict[int, list[Event]] = {k: [] for k in range(len(writers))}
    try:
        for round_no in range(3):  # the writers take turns: their WAL records interleave
            for k, conn in enumerate(writers):
                conn.execute("INSERT INTO tickets (title) VALUES ('other table')")
                event = Event(
                    aggregate_id=f"W{k}-{round_no}",
                    payload={"writer": k, "round": round_no, "text": "é🎫"},
                    headers={"Trace-Id": f"trace-{k}-{round_no}"},
                )
                insert_event(conn, event)
                rows[k].append(event)
        writers[2].commit()
        writers[0].commit()
        writers[1].commit()
    finally:
        for conn in writers:
            conn.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # other tables only: no events
        conn.execute("UPDATE tickets SET title = 'changed'")
        conn.execute("DELETE FROM tickets")

    expected = rows[2] + rows[0] + rows[1]
    messages = wait_for_ids(nats_url, unique_name.upper(), [e.id for e in expected])
    assert message_ids(messages) == [e.id for e in expected]
    for message, event in zip(messages, expected, strict=True):
        assert json.loads(message.data) == event.payload
        assert message.headers["Trace-Id"] == f"trace-{event.aggregate_id[1:]}"
    lsns = [commit_lsn(messages[n]) for n in (0, 3, 6)]
    assert lsns == sorted(lsns) and len(set(lsns)) == 3
    assert {m.headers["Cdc-Lsn"] for m in messages[:3]} == {messages[0].headers["Cdc-Lsn"]}
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(messages[-1]))


def test_a_restart_resumes_without_losing_or_repeating_events(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = wal2json_config(pg_dsn, nats_url, unique_name)
    bridge = start_bridge(make_bridge, config)
    first = insert_events(pg_dsn, [Event(aggregate_id=f"A-{n}") for n in range(3)])
    wait_for_ids(nats_url, unique_name.upper(), first)
    bridge.kill()  # no shutdown work: whatever was unconfirmed is sent again
    while_down = insert_events(pg_dsn, [Event(aggregate_id=f"B-{n}") for n in range(3)])
    start_bridge(make_bridge, config)
    after = insert_events(pg_dsn, [Event(aggregate_id="C")])
    messages = wait_for_ids(nats_url, unique_name.upper(), after)
    assert duplicated_ids(messages) == {}
    assert message_ids(messages) == first + while_down + after


# --- an outbox of logical decoding messages only ------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_outbox_of_messages_only(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, plugin: str
) -> None:
    config = bridge_config(
        pg_dsn,
        nats_url,
        unique_name,
        postgres={"plugin": plugin},
        outbox={"table": [], "message_prefixes": ["orders"]},
        routes=[{"subject": f"{unique_name}.{{aggregate_type}}.{{event_type}}"}],
        dead_letter={"subject": f"{unique_name}.dlq"},
    )
    bridge = start_bridge(make_bridge, config)
    bridge.wait_for_log(log_event("publication_created", tables=[]))
    envelope = {"aggregate_type": "order", "aggregate_id": "O-1", "event_type": "placed"}
    with psycopg.connect(pg_dsn) as conn:
        insert_event(conn, Event())  # the outbox table is not read at all now
        for n in range(2):
            conn.execute(
                "SELECT pg_logical_emit_message(true, 'orders', %s)",
                (json.dumps({**envelope, "payload": {"n": n}}),),
            )
        conn.execute("SELECT pg_logical_emit_message(true, 'orders', 'oops')")
        commit_position = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "SELECT pg_logical_emit_message(true, 'orders', %s)",
            (json.dumps({**envelope, "id": "last", "event_type": "shipped", "payload": None}),),
        )
    with psycopg.connect(pg_dsn) as conn:  # rolled back: never an event
        conn.execute(
            "SELECT pg_logical_emit_message(true, 'orders', %s)",
            (json.dumps({**envelope, "payload": "rolled back"}),),
        )
        conn.rollback()

    messages = wait_for_ids(nats_url, unique_name.upper(), ["last"])
    assert commit_position is not None
    lsn = messages[0].headers["Cdc-Lsn"]
    assert parse_lsn(lsn) >= parse_lsn(commit_position[0])  # the commit, after the rows
    assert [(m.subject, m.headers["Nats-Msg-Id"], m.data) for m in messages] == [
        (f"{unique_name}.order.placed", f"{lsn}-0", b'{"n": 0}'),
        (f"{unique_name}.order.placed", f"{lsn}-1", b'{"n": 1}'),
        (f"{unique_name}.dlq", f"{lsn}-2", b"oops"),
        (f"{unique_name}.order.shipped", "last", b"null"),
    ]
    assert {m.headers["Cdc-Table"] for m in messages} == {"message:orders"}
    assert "invalid message envelope" in messages[2].headers["Cdc-Error"]
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(messages[-1]))
