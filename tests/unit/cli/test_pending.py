"""Decoding a slot's pending changes for `slots peek` / `slots advance` (pure part)."""

from __future__ import annotations

from support import paths

from cdc_bridge.cli.pending import RowDescriber, decode_transactions, group_raw
from cdc_bridge.config.load import parse_config
from cdc_bridge.source.catalog import RawChange
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder

FIXTURES = paths.FIXTURES / "pgoutput"
# The captured transaction: Begin (xid 727), Relation, Insert, Commit (end 0/15452B0).
CAPTURED = ("01_outbox_begin", "02_outbox_relation", "03_outbox_insert_full", "06_outbox_commit")
ROW_ID = "0b7e1c2a-9d44-4f5e-8a51-3c2d1e0f9a77"  # aggregate_type order, event_type order.created

CONFIG = """\
postgres: {dsn: "postgresql://app@127.0.0.1/app"}
nats: {servers: [nats://127.0.0.1:4222], stream: {name: OUTBOX, subjects: ["events.>"]}}
routes:
  - name: by_type
    when: {aggregate_type: ticket}
    subject: "events.{aggregate_type}"
  - name: by_event
    subject: "events.x.{event_type}"
"""


def captured_changes() -> list[RawChange]:
    return [
        RawChange(lsn=0x1545280 + index, xid=727, data=(FIXTURES / f"{name}.bin").read_bytes())
        for index, name in enumerate(CAPTURED)
    ]


def test_without_config_rows_show_their_id_and_no_route() -> None:
    [tx] = decode_transactions(captured_changes(), PgoutputDecoder(), RowDescriber(None))
    assert (tx.xid, tx.end_lsn) == (727, 0x15452B0)
    [row] = tx.rows
    assert (row.table, row.action, row.row_id, row.route, row.subject) == (
        "public.outbox", "insert", ROW_ID, None, None,
    )  # fmt: skip
    assert row.lsn == 0x1545280 + 2  # the Insert's own position


def test_with_config_the_routers_verdict_is_shown() -> None:
    dead_letter = parse_config(CONFIG + "dead_letter: {subject: events.dlq}\n", env={})
    [tx] = decode_transactions(captured_changes(), PgoutputDecoder(), RowDescriber(dead_letter))
    [row] = tx.rows
    # event_type "order.created" would add a subject token: dead-lettered, with the reason.
    assert (row.route, row.subject) == ("dead_letter", "events.dlq")
    assert row.note is not None and row.note.startswith("dead letter: unsafe value")

    no_dead_letter = parse_config(CONFIG, env={})
    [tx] = decode_transactions(captured_changes(), PgoutputDecoder(), RowDescriber(no_dead_letter))
    [row] = tx.rows
    assert (row.route, row.subject) == (None, None)
    assert row.note is not None and row.note.startswith("poison: unsafe value")


def test_a_table_the_bridge_does_not_read_is_marked_ignored() -> None:
    config = parse_config(CONFIG + "outbox: {table: billing.outbox}\n", env={})
    [tx] = decode_transactions(captured_changes(), PgoutputDecoder(), RowDescriber(config))
    assert tx.rows[0].note == "not an outbox table: the bridge ignores it"


def test_raw_output_is_grouped_by_transaction_ending_at_its_last_line() -> None:
    changes = [
        RawChange(10, 5, b'{"action":"B"}'),
        RawChange(11, 5, b'{"action":"I"}'),
        RawChange(20, 5, b'{"action":"C"}'),
        RawChange(30, 6, b'{"action":"B"}'),
        RawChange(40, 6, b'{"action":"C"}'),
    ]
    first, second = group_raw(changes)
    assert (first.xid, first.end_lsn, len(first.rows)) == (5, 20, 3)
    assert (second.xid, second.end_lsn) == (6, 40)
    assert first.rows[1].data == '{"action":"I"}' and first.rows[1].action == "raw"
