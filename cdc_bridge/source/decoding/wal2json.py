"""wal2json format-version 2 decoding (pure: payload bytes in, change events out).

With format-version 2 every XLogData payload is one JSON object, one per action. What
wal2json 2.5 on PostgreSQL 15 sends for the options of ``wal2json_options`` (captured in
tests/fixtures/wal2json)::

    {"action":"B","xid":728,"timestamp":"...","lsn":"0/15229C0","nextlsn":"0/15229F0"}
    {"action":"I","xid":728,"timestamp":"...","lsn":"0/15227D0","schema":"public",
     "table":"blobs","columns":[{"name":"id","type":"text","typeoid":25,"value":"b1"}, ...]}
    {"action":"M","xid":728,"timestamp":"...","lsn":"0/1523070","transactional":true,
     "prefix":"orders","content":"..."}
    {"action":"C","xid":728,"timestamp":"...","lsn":"0/15229C0","nextlsn":"0/15229F0"}

B's and C's ``lsn`` is the commit record's LSN (``txn->final_lsn``) and ``nextlsn`` its
end (``txn->end_lsn``): the very values pgoutput puts in Begin.final_lsn and in
Commit.commit_lsn/end_lsn, so positions, ``Cdc-Lsn`` and message ids come out the same.

Column values become PostgreSQL's text form, as pgoutput gives them:

- JSON strings stay as they are: text, uuid, timestamps, arrays, and json/jsonb exactly
  as PostgreSQL prints them (wal2json sends them as strings, it does not re-serialise).
- JSON numbers (int2/4/8, oid, float4/8, numeric) are the literal text wal2json copied
  from the type's output function: ``json.loads`` hands it to ``parse_int`` and
  ``parse_float`` unconverted, so ``12345678901234567890.123400`` and ``-0`` survive.
- true/false (boolean) become ``t``/``f``.
- bytea: wal2json drops the ``\\x`` of the hex text form and sends the digits; they become
  bytes. That needs ``bytea_output = hex`` in the walsender: wal2json mangles the escape
  form (and reads past the end of an empty one), so the bridge sets it on its replication
  connection (``SESSION_OPTIONS``).
- null becomes None.

Known differences from pgoutput, where wal2json 2.5 itself loses the information:

- numeric and float ``NaN``/``Infinity``/``-Infinity`` arrive as null (JSON has no such
  numbers; wal2json's ``numeric-data-types-as-string`` only exists from 2.6 on).
- Message content is cut at its first NUL byte (pgoutput passes any bytes). A JSON
  envelope never contains a raw NUL, so only invalid envelopes can be affected.
- Text is sent in the database's encoding: the bridge needs a UTF-8 database.

Tables in ``change_tables`` (``outbox.change_tables``) decode into RowChange events:
inserts, updates and deletes with wal2json's own type names and ``identity``. The options
then ask for ``actions 'insert,update,delete'`` for every table in ``add-tables``, so
updates and deletes of the outbox tables arrive too and are skipped here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cdc_bridge.core.changes import (
    JSON_TYPE_OIDS,
    NO_COLUMNS,
    Begin,
    Change,
    ChangeColumn,
    ColumnValue,
    Commit,
    Insert,
    LogicalMessage,
    RowChange,
)
from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.core.snapshots import SNAPSHOT_PREFIX
from cdc_bridge.source.decoding import DecodeError

# Options of the walsender session that wal2json's output depends on (see the docstring).
SESSION_OPTIONS = "-c bytea_output=hex"

_BYTEA_OID = "17"  # a string: parse_int keeps every JSON number as its text
_JSON_OIDS = frozenset(str(oid) for oid in JSON_TYPE_OIDS)
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# parse_int/parse_float: keep every JSON number as its literal text (see the docstring).
_decoder = json.JSONDecoder(parse_int=str, parse_float=str)


def wal2json_options(
    tables: Sequence[str],
    message_prefixes: Sequence[str],
    change_tables: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """START_REPLICATION options for wal2json: inserts into ``tables``, inserts, updates
    and deletes of ``change_tables`` and, when ``message_prefixes`` is not empty, the
    logical decoding messages with those prefixes.

    Table and prefix names need no escaping: the config allows no characters that are
    special in these lists (space, quote, comma, backslash, '*'; '.' only between schema
    and table).
    """
    options = [
        ("format-version", "2"),
        ("include-xids", "1"),
        ("include-lsn", "1"),
        ("include-transaction", "1"),
        ("include-timestamp", "1"),
        ("include-type-oids", "1"),
        # wal2json's actions apply to every table it sends: with change tables the outbox
        # tables' updates and deletes come too, and the decoder skips them.
        ("actions", "insert,update,delete" if change_tables else "insert"),
    ]
    every_table = [*tables, *change_tables]
    # Without add-tables wal2json sends every table; '*.*' filters them all out.
    options.append(
        ("add-tables", ",".join(every_table)) if every_table else ("filter-tables", "*.*")
    )
    if message_prefixes:
        # Snapshot rows of change tables come as messages too (core/snapshots.py).
        prefixes = [*message_prefixes, *([SNAPSHOT_PREFIX] if change_tables else [])]
        options.append(("add-msg-prefixes", ",".join(prefixes)))
    return options


class Wal2jsonDecoder:
    """Decodes wal2json format-version 2 payloads, one at a time.

    Stateless: every payload describes itself (table, column names, types), so unlike
    pgoutput there is no relation cache to keep in step with the stream. Changes of
    ``change_tables`` ("schema.table") become RowChange events, inserts included.
    """

    def __init__(self, change_tables: frozenset[str] = frozenset()) -> None:
        self._change_tables = change_tables

    def decode(self, payload: bytes) -> Change | None:
        """Decode one wal2json message; None for actions the outbox does not need.

        Raises DecodeError for malformed JSON, a missing or mistyped field, or an
        unknown action.
        """
        text, utf8 = _text(payload)
        try:
            document = _decoder.decode(text)
        except ValueError as exc:  # JSONDecodeError; RecursionError cannot happen here
            raise DecodeError(
                f"wal2json message is not JSON ({len(payload)} bytes): {exc}"
            ) from None
        if not isinstance(document, dict):
            raise DecodeError(f"wal2json message is a JSON {type(document).__name__}")
        action = document.get("action")
        try:
            if action == "I":
                if not utf8:
                    raise DecodeError(_NOT_UTF8)
                if self._change_tables and _table(document) in self._change_tables:
                    return _decode_row_change(document)
                return _decode_insert(document)
            if action == "B":
                return _decode_begin(document)
            if action == "C":
                return _decode_commit(document)
            if action == "M":
                return _decode_message(document)
            if action in ("U", "D"):
                # Only change tables' updates and deletes are events; without change
                # tables they are not asked for (actions 'insert'), harmless if they come.
                if not self._change_tables or _table(document) not in self._change_tables:
                    return None
                if not utf8:
                    raise DecodeError(_NOT_UTF8)
                return _decode_row_change(document)
            if action == "T":
                return None  # not asked for; a truncate is not a row change
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(
                f"malformed wal2json {action!r} message: {type(exc).__name__}: {exc} "
                f"(expected format-version 2 with include-lsn, include-xids)"
            ) from None
        raise DecodeError(f"unknown wal2json action {action!r}")


_NOT_UTF8 = (
    "wal2json sent a row that is not UTF-8: it writes text in the database's encoding, "
    "and the bridge needs a UTF-8 database"
)


def _text(payload: bytes) -> tuple[str, bool]:
    """The payload as text, and whether it was valid UTF-8.

    Message content is whatever bytes the application emitted: invalid UTF-8 there must
    reach the envelope check (and the dead letter), not stop the decoder, so undecodable
    bytes are kept as surrogates and restored by ``_decode_message``.
    """
    try:
        return payload.decode("utf-8"), True
    except UnicodeDecodeError:
        return payload.decode("utf-8", "surrogateescape"), False


def _decode_begin(document: dict[str, Any]) -> Begin:
    return Begin(
        xid=int(document["xid"]),
        final_lsn=parse_lsn(_string(document, "lsn")),
        commit_time=_commit_time(document.get("timestamp")),
    )


def _decode_commit(document: dict[str, Any]) -> Commit:
    return Commit(
        commit_lsn=parse_lsn(_string(document, "lsn")),
        end_lsn=parse_lsn(_string(document, "nextlsn")),
    )


def _decode_message(document: dict[str, Any]) -> LogicalMessage:
    transactional = document["transactional"]
    if not isinstance(transactional, bool):
        raise TypeError(f"'transactional' is {transactional!r}, not true or false")
    return LogicalMessage(
        transactional=transactional,
        prefix=_string(document, "prefix"),
        content=_string(document, "content").encode("utf-8", "surrogateescape"),
        lsn=parse_lsn(_string(document, "lsn")),
    )


def _table(document: dict[str, Any]) -> str:
    return f"{_string(document, 'schema')}.{_string(document, 'table')}"


def _decode_insert(document: dict[str, Any]) -> Insert:
    table = _table(document)
    columns = _array(document, "columns")
    row: dict[str, ColumnValue] = {}
    json_columns: list[str] = []
    for column in columns:
        name = column["name"]
        row[name] = _column_value(column, table)
        if _is_json(column):
            json_columns.append(name)
    return Insert(table, row, frozenset(json_columns) if json_columns else NO_COLUMNS)


def _column_value(column: dict[str, Any], table: str) -> ColumnValue:
    """A column's JSON value -> PostgreSQL's text form (bytes for bytea)."""
    value = column["value"]
    if type(value) is str:  # the common case first: text, uuid, json, timestamps, numbers
        return _bytea_from_hex(value) if _is_bytea(column) else value
    if value is None:
        return None
    if value is True:
        return "t"
    if value is False:
        return "f"
    raise TypeError(f"column {column['name']!r} of {table} has a JSON {type(value).__name__} value")


def _decode_row_change(document: dict[str, Any]) -> RowChange:
    action = document["action"]
    schema, name = _string(document, "schema"), _string(document, "table")
    table = f"{schema}.{name}"
    columns = _array(document, "columns") if action != "D" else []
    identity = _array(document, "identity") if action != "I" and "identity" in document else []
    return RowChange(
        action,
        schema,
        name,
        tuple(_change_column(column, table) for column in columns),
        tuple(_change_column(column, table) for column in identity),
    )


def _change_column(column: dict[str, Any], table: str) -> ChangeColumn:
    name = column["name"]
    if not isinstance(name, str):
        raise TypeError(f"a column name of {table} is {name!r}, not a string")
    type_oid = column.get("typeoid")  # include-type-oids: a number, kept as its text
    return ChangeColumn(
        name,
        _string(column, "type"),
        int(type_oid) if type_oid is not None else 0,
        _column_value(column, table),
    )


def _array(document: dict[str, Any], key: str) -> list[Any]:
    value = document[key]
    if not isinstance(value, list):
        raise TypeError(f"{key!r} is a JSON {type(value).__name__}, not an array")
    return value


def _is_json(column: dict[str, Any]) -> bool:
    oid = column.get("typeoid")  # as _is_bytea
    if oid is not None:
        return oid in _JSON_OIDS
    return column.get("type") in ("json", "jsonb")


def _is_bytea(column: dict[str, Any]) -> bool:
    oid = column.get("typeoid")  # include-type-oids; the type name is the fallback
    return oid == _BYTEA_OID if oid is not None else column.get("type") == "bytea"


def _bytea_from_hex(digits: str) -> bytes:
    # wal2json strips the "\x"; accept it too, should a future version keep it.
    return bytes.fromhex(digits[2:] if digits.startswith("\\x") else digits)


def _string(document: dict[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} is {value!r}, not a string")
    return value


def _commit_time(timestamp: object) -> int:
    """include-timestamp's text -> microseconds since 2000-01-01 UTC; 0 when unknown.

    wal2json prints it with the session's DateStyle and TimeZone (ISO by default:
    ``2026-11-26 04:57:09.695397+00``). It only feeds latency metrics, so a form we
    cannot read means "unknown", never a decoding failure.
    """
    if not isinstance(timestamp, str):
        return 0
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        return 0
    return (moment - _POSTGRES_EPOCH) // _MICROSECOND
