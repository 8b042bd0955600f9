"""Change events: a RowChange as the JSON object wal2json format-version 2 writes.

A route with ``payload: change`` publishes one object per insert, update or delete of a
table in ``outbox.change_tables``, in the shape consumers written for wal2json read::

    {"action":"U","schema":"public","table":"tickets",
     "columns":[{"name":"id","type":"integer","value":7},
                {"name":"title","type":"character varying(200)","value":"Printer jam"}],
     "identity":[{"name":"id","type":"integer","value":7}]}

``columns`` (I and U) is the new row; ``identity`` (U and D) the old row's replica
identity. Keys come in wal2json's order. Values are written as wal2json writes them:
smallint, integer, bigint, oid, real, double precision and numeric as JSON numbers in
PostgreSQL's own text (NaN and +-Infinity as null), boolean as true/false, bytea as its
hex digits without ``\\x``, NULL as null, every other type as a JSON string of
PostgreSQL's text form. Both decoders produce the same RowChange for the same WAL, so
the published bytes are identical whichever plugin the slot uses.

The routes see a change as a row: the new row's columns (the identity's for a delete)
plus the pseudo-column ``action`` ("I", "U" or "D"), so ``when: {action: D}`` and
``{action}`` in a subject work like any column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from json.encoder import encode_basestring

import structlog

from cdc_bridge.core.changes import ChangeColumn, ColumnValue, RowChange
from cdc_bridge.core.templates import ACTION_PSEUDO_COLUMN

UNKNOWN_TYPE = "unknown"

# The types wal2json writes as JSON numbers (its pg_decode_write_value): int8, int2, int4,
# oid, float4, float8, numeric; and boolean, written as true/false.
NUMBER_TYPE_OIDS = frozenset({20, 21, 23, 26, 700, 701, 1700})
BOOLEAN_TYPE_OID = 16
NOT_A_NUMBER = frozenset({"NaN", "Infinity", "-Infinity"})  # not JSON: wal2json writes null

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

log = structlog.get_logger("cdc_bridge.routing.change_events")


def change_json(change: RowChange) -> bytes:
    """The wal2json format-version 2 object for one change, as UTF-8 JSON."""
    parts = [
        '{"action":',
        _json_string(change.action),
        ',"schema":',
        _json_string(change.schema),
        ',"table":',
        _json_string(change.name),
    ]
    if change.action != "D":
        parts.append(',"columns":')
        parts.append(_columns_json(change.columns))
    if change.action in ("U", "D"):  # an insert or a snapshot row (R) has no old row
        parts.append(',"identity":')
        parts.append(_columns_json(change.identity))
    parts.append("}")
    return "".join(parts).encode("utf-8")


def routing_row(change: RowChange) -> dict[str, ColumnValue]:
    """What the routes match and fill templates from: the new row (a delete's identity)
    plus ``action``, which wins over a real column of that name."""
    source = change.identity if change.action == "D" else change.columns
    row: dict[str, ColumnValue] = {column.name: column.value for column in source}
    row[ACTION_PSEUDO_COLUMN] = change.action
    return row


def wal2json_value(type_oid: int, value: ColumnValue) -> ColumnValue:
    """A number column's text as wal2json reports it: NaN and +-Infinity become None.

    pgoutput sends PostgreSQL's text; wal2json writes null for these (JSON has no such
    numbers). The pgoutput decoder applies this so that both plugins give the same change.
    """
    if type(value) is str and type_oid in NUMBER_TYPE_OIDS and value in NOT_A_NUMBER:
        return None
    return value


def wal2json_type_name(formatted: str) -> str:
    """format_type()'s text as wal2json writes it in "type".

    wal2json prints a type name that format_type() had to quote ("MyType") without
    escaping, so a consumer reads it without the quotes; any other name is a plain string.
    """
    if len(formatted) > 1 and formatted[0] == formatted[-1] == '"' and formatted.count('"') == 2:
        return formatted[1:-1]
    return formatted


class TypeNames:
    """(type oid, typmod) -> the type's name as wal2json prints it, for pgoutput.

    pgoutput's Relation message gives type oids and typmods only. The daemon reads the
    names with format_type() (what wal2json calls) for the change tables' columns and the
    built-in types before streaming; a pair it did not see, such as a column added with a
    new typmod while the bridge runs, is "unknown" until the next session, with a warning.
    """

    def __init__(self, names: Mapping[tuple[int, int], str]) -> None:
        self._names = dict(names)
        self._warned: set[tuple[int, int]] = set()

    def __call__(self, type_oid: int, typmod: int) -> str:
        name = self._names.get((type_oid, typmod))
        if name is not None:
            return name
        if (type_oid, typmod) not in self._warned:
            self._warned.add((type_oid, typmod))
            log.warning(
                "type_name_unknown",
                type_oid=type_oid,
                typmod=typmod,
                error='change events name this column\'s type "unknown" until the bridge '
                "restarts (the column's type was added or changed after the session began)",
            )
        return UNKNOWN_TYPE


def _columns_json(columns: tuple[ChangeColumn, ...]) -> str:
    return (
        "["
        + ",".join(
            '{"name":'
            + _json_string(column.name)
            + ',"type":'
            + _json_string(column.type)
            + ',"value":'
            + column_value_json(column)
            + "}"
            for column in columns
        )
        + "]"
    )


def column_value_json(column: ChangeColumn) -> str:
    value = column.value
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return '"' + value.hex() + '"'
    if column.type_oid in NUMBER_TYPE_OIDS:
        if value in NOT_A_NUMBER:
            return "null"
        # PostgreSQL's text for these types is a JSON number; anything else (never seen)
        # is quoted rather than allowed to break the document.
        return value if _JSON_NUMBER.fullmatch(value) else _json_string(value)
    if column.type_oid == BOOLEAN_TYPE_OID:
        return "true" if value == "t" else "false"
    return _json_string(value)


def _json_string(text: str) -> str:
    # What json.dumps(text, ensure_ascii=False) returns, without the encoder object it
    # makes per call (this runs per value of every change event).
    return encode_basestring(text)
