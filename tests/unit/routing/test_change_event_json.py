"""Change events: both decoders on one captured workload, the wal2json-shaped JSON, routing
of changes, and the config keys.

tests/fixtures/change_events (see capture.py there) holds what wal2json 2.5 and pgoutput
on PostgreSQL 15 sent for the same inserts, updates and deletes of three change tables
(REPLICA IDENTITY DEFAULT, FULL and USING INDEX) and an outbox table.
"""

from __future__ import annotations

import json
import re
import struct

import pytest
import structlog
from support import paths

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.config.problems import ConfigError
from cdc_bridge.core.changes import Change, ChangeColumn, Insert, RowChange
from cdc_bridge.routing.change_events import (
    TypeNames,
    change_json,
    routing_row,
    wal2json_type_name,
)
from cdc_bridge.routing.router import Outbound, Poison, Router
from cdc_bridge.source.decoding import DecodeError
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder
from cdc_bridge.source.decoding.wal2json import Wal2jsonDecoder, wal2json_options

FIXTURES = paths.FIXTURES / "change_events"
CHANGE_TABLES = frozenset({"public.tickets", "public.audited", "app.tagged"})

# Fields of wal2json's objects that come from options the bridge sets for its own use.
_OPTION_FIELDS = re.compile(r',"(?:xid|typeoid)":\d+|,"(?:timestamp|lsn)":"[^"]*"')


def captured_type_names() -> TypeNames:
    triples = json.loads((FIXTURES / "type_names.json").read_text())
    return TypeNames({(oid, typmod): name for oid, typmod, name in triples})


def pgoutput_changes() -> list[Change]:
    decoder = PgoutputDecoder(CHANGE_TABLES, captured_type_names())
    lines = (FIXTURES / "pgoutput.hex").read_text().split()
    return [c for line in lines if (c := decoder.decode(bytes.fromhex(line))) is not None]


def wal2json_lines() -> list[bytes]:
    return (FIXTURES / "wal2json.jsonl").read_bytes().splitlines()


def wal2json_changes() -> list[Change]:
    decoder = Wal2jsonDecoder(CHANGE_TABLES)
    return [c for line in wal2json_lines() if (c := decoder.decode(line)) is not None]


def row_changes(changes: list[Change]) -> list[RowChange]:
    return [c for c in changes if isinstance(c, RowChange)]


def column(change: RowChange, name: str, *, identity: bool = False) -> ChangeColumn:
    [found] = [c for c in (change.identity if identity else change.columns) if c.name == name]
    return found


# --- both decoders on the captured workload ---------------------------------------------


def test_both_decoders_give_the_same_changes() -> None:
    from_pgoutput = row_changes(pgoutput_changes())
    from_wal2json = row_changes(wal2json_changes())
    assert [(c.action, c.table) for c in from_pgoutput] == [
        ("I", "public.tickets"),
        ("I", "public.tickets"),
        ("U", "public.tickets"),
        ("U", "public.tickets"),
        ("D", "public.tickets"),
        ("D", "public.tickets"),
        ("I", "public.audited"),
        ("U", "public.audited"),
        ("D", "public.audited"),
        ("I", "app.tagged"),
        ("U", "app.tagged"),
        ("U", "app.tagged"),
        ("D", "app.tagged"),
        ("I", "public.tickets"),
        ("U", "public.tickets"),
    ]
    assert from_pgoutput == from_wal2json


def test_change_json_is_byte_for_byte_what_wal2json_writes() -> None:
    """Our JSON from pgoutput's changes is wal2json's own line, less the fields of the
    options the bridge adds for itself (xid, timestamp, lsn, typeoid)."""
    theirs = [
        _OPTION_FIELDS.sub("", line.decode())
        for line in wal2json_lines()
        if json.loads(line)["action"] in "IUD" and b'"table":"outbox"' not in line
    ]
    ours = [change_json(change).decode() for change in row_changes(pgoutput_changes())]
    assert len(ours) == len(theirs) == 15
    for mine, wal2json_line in zip(ours, theirs, strict=True):
        assert mine == wal2json_line


def test_outbox_tables_stay_inserts_and_their_updates_and_deletes_are_skipped() -> None:
    for changes in (pgoutput_changes(), wal2json_changes()):
        inserts = [c for c in changes if isinstance(c, Insert)]
        assert [c.table for c in inserts] == ["public.outbox"]
        assert all(c.table != "public.outbox" for c in row_changes(changes))


def test_unchanged_toast_values_are_left_out_of_an_update() -> None:
    inserted, _, updated, *_ = row_changes(pgoutput_changes())
    assert len(column(inserted, "body").value or "") == 8000
    assert "body" not in [c.name for c in updated.columns]
    assert [c.name for c in updated.identity] == ["id"]
    assert column(updated, "status").value == "closed"


def test_identity_by_replica_identity_setting() -> None:
    changes = row_changes(pgoutput_changes())
    key_changed, deleted = changes[3], changes[4]
    assert [(c.name, c.value) for c in key_changed.identity] == [("id", "2")]
    assert column(key_changed, "id").value == "20"
    assert deleted.columns == () and [(c.name, c.value) for c in deleted.identity] == [("id", "20")]
    full_update, full_delete = changes[7], changes[8]  # REPLICA IDENTITY FULL
    assert [c.name for c in full_update.identity] == ["id", "note", "body"]
    assert column(full_update, "note", identity=True).value is None  # NULLs included
    assert len(column(full_update, "body", identity=True).value or "") == 8000
    assert [c.name for c in full_update.columns] == ["id", "note"]  # body: unchanged TOAST
    assert column(full_delete, "note", identity=True).value == "seen"
    index_updates = changes[10:13]  # REPLICA IDENTITY USING INDEX (tag)
    assert [[(c.name, c.value) for c in u.identity] for u in index_updates] == [
        [("tag", "k1")],
        [("tag", "k1")],
        [("tag", "k2")],
    ]


def test_types_and_values_as_wal2json_reports_them() -> None:
    first = row_changes(pgoutput_changes())[0]
    types = {c.name: c.type for c in first.columns}
    assert types["title"] == "character varying(200)"
    assert types["estimate"] == "numeric(10,2)"
    assert types["opened"] == "timestamp(3) without time zone"
    assert types["color"] == "app.color" and types["mood"] == "mood"
    assert types["votes"] == "positive"  # a domain keeps its own name
    document = json.loads(change_json(first))
    values = {c["name"]: c["value"] for c in document["columns"]}
    assert values["priority"] == 2 and values["done"] is False
    assert values["big"] == 9007199254740993
    assert values["attachment"] == "00ff10"
    assert values["votes"] == "5"  # a domain over integer is not a JSON number
    assert values["tags"] == '{a,NULL,"b c"}'
    not_numbers = row_changes(pgoutput_changes())[13]
    assert [column(not_numbers, n).value for n in ("estimate", "score", "ratio")] == [None] * 3


# --- hand-built pgoutput messages --------------------------------------------------------


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def _relation(rel_id: int, table: str, columns: list[tuple[str, int, int]]) -> bytes:
    schema, _, name = table.partition(".")
    body = struct.pack(">I", rel_id) + _cstring(schema) + _cstring(name) + b"d"
    body += struct.pack(">H", len(columns))
    for column_name, type_oid, flags in columns:
        body += bytes([flags]) + _cstring(column_name) + struct.pack(">Ii", type_oid, -1)
    return b"R" + body


def _tuple(values: list[str | None]) -> bytes:
    body = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            body += b"n"
        else:
            body += b"t" + struct.pack(">I", len(value.encode())) + value.encode()
    return body


TICKETS = _relation(5, "public.tickets", [("id", 23, 1), ("title", 25, 0)])


def test_updates_and_deletes_of_other_tables_are_skipped() -> None:
    decoder = PgoutputDecoder(CHANGE_TABLES)
    assert decoder.decode(_relation(6, "public.outbox", [("id", 25, 1)])) is None
    assert decoder.decode(b"U" + struct.pack(">I", 6) + b"N" + _tuple(["x"])) is None
    assert decoder.decode(b"D" + struct.pack(">I", 6) + b"K" + _tuple(["x"])) is None


def test_an_unresolved_type_is_unknown() -> None:
    decoder = PgoutputDecoder(CHANGE_TABLES)  # no resolver
    decoder.decode(TICKETS)
    change = decoder.decode(b"I" + struct.pack(">I", 5) + b"N" + _tuple(["1", "t"]))
    assert isinstance(change, RowChange)
    assert [c.type for c in change.columns] == ["unknown", "unknown"]


def test_type_names_warn_once_per_unknown_type() -> None:
    names = TypeNames({(23, -1): "integer"})
    with structlog.testing.capture_logs() as logs:
        assert names(23, -1) == "integer"
        assert [names(1043, 24), names(1043, 24)] == ["unknown", "unknown"]
    assert [entry["event"] for entry in logs] == ["type_name_unknown"]


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"D" + struct.pack(">I", 5) + b"N" + _tuple(["1", None]), id="delete-new"),
        pytest.param(b"U" + struct.pack(">I", 5) + b"K" + _tuple(["1", None]), id="update-no-new"),
        pytest.param(b"U" + struct.pack(">I", 5) + b"N" + _tuple(["1"]), id="column-count"),
        pytest.param(b"U" + struct.pack(">I", 5) + b"N" + _tuple(["1", "t"]) + b"x", id="trailing"),
        pytest.param(b"U" + struct.pack(">I", 5) + b"N" + _tuple(["1", "t"])[:-1], id="short"),
    ],
)
def test_malformed_changes_are_decode_errors(message: bytes) -> None:
    decoder = PgoutputDecoder(CHANGE_TABLES)
    decoder.decode(TICKETS)
    with pytest.raises(DecodeError):
        decoder.decode(message)


def test_without_change_tables_nothing_changes() -> None:
    decoder = PgoutputDecoder()
    decoder.decode(TICKETS)
    assert decoder.decode(b"I" + struct.pack(">I", 5) + b"N" + _tuple(["1", "t"])) == Insert(
        "public.tickets", {"id": "1", "title": "t"}
    )
    assert decoder.decode(b"D" + struct.pack(">I", 5) + b"K" + _tuple(["1", None])) is None
    line = b'{"action":"D","schema":"public","table":"tickets","identity":[]}'
    assert Wal2jsonDecoder().decode(line) is None


# --- the JSON ------------------------------------------------------------------------------


def _change(
    action: str, *columns: ChangeColumn, identity: tuple[ChangeColumn, ...] = ()
) -> RowChange:
    return RowChange(action, "public", "t", columns, identity)


@pytest.mark.parametrize(
    ("type_oid", "value", "written"),
    [
        (23, "42", "42"),
        (1700, "-0.50", "-0.50"),
        (701, "1.5e+300", "1.5e+300"),
        (1700, "NaN", "null"),
        (701, "-Infinity", "null"),
        (1700, "1,5", '"1,5"'),  # never seen; still valid JSON
        (16, "t", "true"),
        (16, "f", "false"),
        (17, b"\x00\xff", '"00ff"'),
        (25, None, "null"),
        (25, 'a "q" \\ \n \x01 é', '"a \\"q\\" \\\\ \\n \\u0001 é"'),
        (16408, "5", '"5"'),  # a domain over integer
    ],
)
def test_values_are_written_as_wal2json_writes_them(
    type_oid: int, value: str | bytes | None, written: str
) -> None:
    change = _change("I", ChangeColumn("c", "x", type_oid, value))
    expected = (
        '{"action":"I","schema":"public","table":"t","columns":'
        f'[{{"name":"c","type":"x","value":{written}}}]}}'
    )
    assert change_json(change).decode() == expected
    json.loads(change_json(change))


def test_actions_carry_columns_identity_or_both() -> None:
    key = ChangeColumn("id", "integer", 23, "1")
    assert json.loads(change_json(_change("I", key))).keys() == {
        "action",
        "schema",
        "table",
        "columns",
    }
    update = json.loads(change_json(_change("U", key)))
    assert list(update) == ["action", "schema", "table", "columns", "identity"]
    assert update["identity"] == []
    assert list(json.loads(change_json(_change("D", identity=(key,))))) == [
        "action",
        "schema",
        "table",
        "identity",
    ]


def test_quoted_type_names_lose_their_quotes_as_in_wal2json() -> None:
    assert wal2json_type_name('"MyType"') == "MyType"
    assert wal2json_type_name('"MyType"[]') == '"MyType"[]'
    assert wal2json_type_name('app."MyType"') == 'app."MyType"'
    assert wal2json_type_name("integer") == "integer"


def test_routing_row_is_the_new_row_or_the_deleted_identity_plus_action() -> None:
    key = ChangeColumn("id", "integer", 23, "1")
    action = ChangeColumn("action", "text", 25, "real column")
    assert routing_row(_change("U", key, action, identity=(key,))) == {"id": "1", "action": "U"}
    assert routing_row(_change("D", identity=(key,))) == {"id": "1", "action": "D"}


# --- routing ---------------------------------------------------------------------------------

HEAD = """\
postgres: {dsn: "postgresql://app@127.0.0.1/app"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: CDC, subjects: ["cdc.>"]}
outbox: {table: public.outbox, change_tables: [public.tickets]}
"""


def config(routes: str, *, dead_letter: bool = True) -> BridgeConfig:
    tail = "dead_letter: {subject: cdc.dlq}\n" if dead_letter else ""
    return parse_config(HEAD + "routes:\n" + routes + tail, env={})


TICKET = RowChange(
    "U",
    "public",
    "tickets",
    (
        ChangeColumn("id", "integer", 23, "7"),
        ChangeColumn("status", "text", 25, "open"),
        ChangeColumn("headers", "jsonb", 3802, '{"X": "from the table"}'),
        ChangeColumn("version", "integer", 23, "3"),
    ),
    (ChangeColumn("id", "integer", 23, "7"),),
)
ROUTES = """\
  - name: deletes
    when: {table: public.tickets, action: D}
    subject: cdc.tickets.deleted
    payload: change
  - name: tickets
    when: {table: public.tickets}
    subject: "cdc.tickets.{action}.{status}"
    headers: {Ticket: "{id}"}
    payload: change
  - subject: "cdc.{aggregate_type}.{event_type}"
"""


def test_a_change_route_publishes_the_change_with_a_position_id() -> None:
    outcome = Router(config(ROUTES)).route_change(TICKET, "0/16B3748-2")
    assert isinstance(outcome, Outbound) and outcome.route == "tickets"
    assert outcome.subject == "cdc.tickets.U.open"
    assert outcome.data == change_json(TICKET)
    assert outcome.msg_id == "0/16B3748-2"
    assert outcome.headers == {"Ticket": "7"}  # a column named headers is not read


def test_action_picks_the_route() -> None:
    deleted = RowChange("D", "public", "tickets", (), TICKET.identity)
    outcome = Router(config(ROUTES)).route_change(deleted, "0/1-0")
    assert isinstance(outcome, Outbound)
    assert (outcome.route, outcome.subject) == ("deletes", "cdc.tickets.deleted")


def test_a_route_id_names_the_column_for_changes_too() -> None:
    routes = "  - {subject: cdc.t, payload: change, id: version}\n"
    outcome = Router(config(routes)).route_change(TICKET, "0/1-0")
    assert isinstance(outcome, Outbound) and outcome.msg_id == "3"


def test_a_row_payload_publishes_the_routing_row() -> None:
    routes = "  - {subject: cdc.t, payload: row}\n"
    outcome = Router(config(routes)).route_change(TICKET, "0/1-0")
    assert isinstance(outcome, Outbound) and outcome.msg_id == "0/1-0"
    assert json.loads(outcome.data)["action"] == "U"


def test_an_unroutable_change_goes_to_the_dead_letter_with_its_position_id() -> None:
    routes = "  - {when: {status: closed}, subject: cdc.t, payload: change}\n"
    outcome = Router(config(routes)).route_change(TICKET, "0/1-4")
    assert isinstance(outcome, Outbound) and outcome.route == "dead_letter"
    assert outcome.msg_id == "0/1-4" and outcome.data == change_json(TICKET)
    assert outcome.headers["Cdc-Error"] == "no route matches"
    poison = Router(config(routes, dead_letter=False)).route_change(TICKET, "0/1-4")
    assert poison == Poison("0/1-4", "no route matches")


def test_an_unsafe_subject_value_is_rejected() -> None:
    change = RowChange("I", "public", "tickets", (ChangeColumn("status", "text", 25, "a.b"),), ())
    outcome = Router(config(ROUTES)).route_change(change, "0/1-0")
    assert isinstance(outcome, Outbound) and outcome.route == "dead_letter"
    assert "unsafe value for {status}" in outcome.headers["Cdc-Error"]
    assert outcome.headers["Cdc-Subject"] == "cdc.tickets.I.{status='a.b'}"


def test_an_outbox_row_at_a_change_route_is_rejected() -> None:
    routes = "  - {subject: cdc.t, payload: change}\n"
    row = {"id": "r1", "payload": "{}", "headers": None}
    outcome = Router(config(routes)).route("public.outbox", row)
    assert isinstance(outcome, Outbound) and outcome.route == "dead_letter"
    assert "not in outbox.change_tables" in outcome.headers["Cdc-Error"]
    assert outcome.msg_id == "r1"


# --- config and options ------------------------------------------------------------------


def test_change_tables_config() -> None:
    parsed = config(ROUTES)
    assert parsed.outbox.change_tables == ("public.tickets",)
    tickets = parsed.routes[1]
    assert (tickets.payload, tickets.id_given) == ("change", False)
    # action is a pseudo-column; a change route without `id` reads no id column
    assert "action" not in parsed.template_columns()
    assert {"status", "id"} <= parsed.template_columns()  # id: the catch-all's, for rows
    only_changes = parse_config(
        HEAD.replace("table: public.outbox, ", "table: [], ")
        + "routes:\n  - {subject: cdc.t, payload: change}\n",
        env={},
    )
    assert only_changes.outbox.tables == () and only_changes.template_columns() == set()


@pytest.mark.parametrize(
    ("outbox", "routes", "problem"),
    [
        (
            "{table: public.tickets, change_tables: [tickets]}",
            "  - {subject: cdc.t}\n",
            "public.tickets is also in outbox.change_tables",
        ),
        (
            "{change_tables: [a.b, a.b]}",
            "  - {subject: cdc.t}\n",
            "a.b listed more than once",
        ),
        (
            "{change_tables: ['bad name']}",
            "  - {subject: cdc.t}\n",
            "expected a table name",
        ),
        (
            "{table: public.outbox}",
            "  - {subject: cdc.t, payload: change}\n",
            "routes[0].payload: `change` publishes changes of outbox.change_tables",
        ),
    ],
)
def test_change_config_problems(outbox: str, routes: str, problem: str) -> None:
    text = HEAD.replace(
        "outbox: {table: public.outbox, change_tables: [public.tickets]}", f"outbox: {outbox}"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text + "routes:\n" + routes, env={})
    assert problem in str(raised.value)


def test_wal2json_options_with_change_tables() -> None:
    options = dict(wal2json_options(("public.outbox",), (), ("public.tickets", "app.t")))
    assert options["add-tables"] == "public.outbox,public.tickets,app.t"
    assert options["actions"] == "insert,update,delete"
    only_changes = dict(wal2json_options((), ("orders",), ("public.tickets",)))
    assert only_changes["add-tables"] == "public.tickets" and "filter-tables" not in only_changes
    assert dict(wal2json_options(("public.outbox",), ()))["actions"] == "insert"


def test_change_routes_read_json_paths_of_a_changed_row() -> None:
    routes = """\
  - when: {table: public.tickets, headers.X: "from the table"}
    subject: "cdc.tickets.{action}.{headers.X}"
    payload: change
  - subject: cdc.other
    payload: change
"""
    outcome = Router(config(routes)).route_change(TICKET, "0/1-0")
    assert isinstance(outcome, Outbound) and outcome.route == "dead_letter"
    # Found (the `when` matched), but unsafe in a subject: the path is named.
    assert outcome.headers["Cdc-Error"].startswith("unsafe value for {headers.X} in subject")
    assert outcome.data == change_json(TICKET)  # the change itself, untouched
    missing = RowChange("D", "public", "tickets", (), TICKET.identity)  # no headers column
    other = Router(config(routes)).route_change(missing, "0/1-1")
    assert isinstance(other, Outbound) and other.subject == "cdc.other"
