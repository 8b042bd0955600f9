"""Change events in Debezium's envelope (``payload: debezium``).

The value of a Debezium PostgreSQL connector's change event, as its JsonConverter writes
it with ``schemas.enable=false``::

    {"before":null,"after":{"id":7,"title":"Printer jam"},
     "source":{"version":"cdc-bridge","connector":"postgresql","name":"cdc-bridge",
               "ts_ms":1764628833123,"snapshot":"false","db":"shop","schema":"public",
               "table":"tickets","txId":771,"lsn":24023128,"xmin":null},
     "op":"c","ts_ms":1764628833123}

``op`` is c, u or d, and r for a row read by ``cdc-bridge snapshot`` (``before`` null,
``source.snapshot`` "true"). ``before`` is null for an insert; for an update it is the
old row under REPLICA IDENTITY FULL and null under DEFAULT (as Debezium's, since the old
row is then not in the WAL); for a delete it is the old row's replica identity. Column
values are written as ``payload: change`` writes them (numbers, booleans, PostgreSQL's
text), except bytea, which is base64 as Debezium's default ``binary.handling.mode`` has
it. docs/configuration.md lists what else differs.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from json.encoder import encode_basestring

from cdc_bridge.core.changes import ChangeColumn, EventPosition, RowChange
from cdc_bridge.routing.change_events import column_value_json

_OPS = {"I": "c", "U": "u", "D": "d", "R": "r"}
# source.snapshot: "true" for a row read by `cdc-bridge snapshot` (op r), as Debezium marks
# its snapshot rows; Debezium's "last" (the snapshot's last row) is not known per row here.
_SNAPSHOT = {True: '"true"', False: '"false"'}
# Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01).
_POSTGRES_EPOCH_MS = 946_684_800_000


@dataclass(slots=True, init=False)  # __init__ written out: one per event (core/changes.py)
class DebeziumEvent:
    """One change's envelope, complete once the pipeline gives its position."""

    head: str  # '{"before":...,"after":...,"source":{..."ts_ms":'
    rest: str  # ',"snapshot":"false","db":...,"table":...'
    op: str

    def __init__(self, head: str, rest: str, op: str) -> None:
        self.head = head
        self.rest = rest
        self.op = op

    def finish(self, at: EventPosition) -> tuple[bytes, str]:
        ts_ms = _POSTGRES_EPOCH_MS + at.commit_time // 1000 if at.commit_time else 0
        tail = f',"txId":{at.xid},"lsn":{at.lsn},"xmin":null}},"op":"{self.op}","ts_ms":{ts_ms}}}'
        return f"{self.head}{ts_ms}{self.rest}{tail}".encode(), ""

    def size_bound(self) -> int:
        return len(self.head) + len(self.rest) + 120


def debezium_event(change: RowChange, database: str) -> DebeziumEvent:
    """The envelope's parts the change itself decides."""
    action = change.action
    after = "null" if action == "D" else _row_json(change.columns)
    before = "null"
    if action == "D" or (action == "U" and _is_whole_row(change)):
        before = _row_json(change.identity)
    head = (
        f'{{"before":{before},"after":{after},'
        '"source":{"version":"cdc-bridge","connector":"postgresql","name":"cdc-bridge",'
        '"ts_ms":'
    )
    rest = (
        f',"snapshot":{_SNAPSHOT[action == "R"]},"db":{_string(database)},'
        f'"schema":{_string(change.schema)},"table":{_string(change.name)}'
    )
    return DebeziumEvent(head, rest, _OPS[action])


def _is_whole_row(change: RowChange) -> bool:
    """Whether an update's identity is the whole old row (REPLICA IDENTITY FULL): it
    then holds every column the new row has. Under DEFAULT it is only the key (the
    old one, or the new row's when the key did not change)."""
    names = {column.name for column in change.identity}
    return all(column.name in names for column in change.columns)


def _row_json(columns: tuple[ChangeColumn, ...]) -> str:
    return "{" + ",".join(f"{_string(column.name)}:{_value(column)}" for column in columns) + "}"


def _value(column: ChangeColumn) -> str:
    if isinstance(column.value, bytes):
        return '"' + base64.b64encode(column.value).decode("ascii") + '"'
    return column_value_json(column)


def _string(text: str) -> str:
    return encode_basestring(text)  # json.dumps(text, ensure_ascii=False) without an encoder
