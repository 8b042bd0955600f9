"""A snapshot row's logical message -> the RowChange it stands for (action ``R``).

``cdc-bridge snapshot`` writes one message per row under ``SNAPSHOT_PREFIX``
(core/snapshots.py has the format and why). The change made here is the one an insert
of the same row decodes into, with action ``R``: the same column values (bytea as bytes,
NaN and infinities of number columns as None, as wal2json reports them) and type names,
so every route, format and dead letter treats it like the table's other changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cdc_bridge.core.changes import ChangeColumn, ColumnValue, RowChange
from cdc_bridge.core.snapshots import (
    SNAPSHOT_ACTION,
    SNAPSHOT_FORMAT_VERSION,
    snapshot_msg_id,
    valid_snapshot_id,
)
from cdc_bridge.routing.change_events import wal2json_type_name, wal2json_value
from cdc_bridge.source.decoding import DecodeError
from cdc_bridge.source.decoding.pgoutput import bytea_from_text

_BYTEA_OID = 17


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    change: RowChange
    msg_id: str  # deterministic: <snapshot id>:<schema.table>:<key>


def snapshot_row(content: bytes) -> SnapshotRow:
    """Decode one snapshot message; DecodeError (saying what is wrong) if it is not one."""
    try:
        document = json.loads(content)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"snapshot row is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DecodeError("snapshot row is not a JSON object")
    version = document.get("v")
    if version != SNAPSHOT_FORMAT_VERSION:
        raise DecodeError(
            f"snapshot row of format version {version!r}; this bridge reads version "
            f"{SNAPSHOT_FORMAT_VERSION}: run the snapshot with the bridge's own cdc-bridge"
        )
    snapshot_id = _text(document, "snapshot")
    if not valid_snapshot_id(snapshot_id):
        raise DecodeError(f"snapshot row has an invalid snapshot id {snapshot_id!r}")
    schema, name = _text(document, "schema"), _text(document, "table")
    raw_columns = document.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise DecodeError("snapshot row has no columns")
    columns = tuple(_column(item) for item in raw_columns)
    values = {column.name: column.value for column in columns}
    key = document.get("key")
    if not isinstance(key, list) or not key or not all(k in values for k in key):
        raise DecodeError(f"snapshot row of {schema}.{name} names no key among its columns")
    key_text = tuple(_key_text(values[k]) for k in key)
    change = RowChange(SNAPSHOT_ACTION, schema, name, columns, ())
    return SnapshotRow(change, snapshot_msg_id(snapshot_id, change.table, key_text))


def _text(document: dict[str, object], member: str) -> str:
    value = document.get(member)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"snapshot row has no {member!r} string")
    return value


def _column(item: object) -> ChangeColumn:
    if not (
        isinstance(item, list)
        and len(item) == 4
        and isinstance(item[0], str)
        and isinstance(item[1], str)
        and isinstance(item[2], int)
        and (item[3] is None or isinstance(item[3], str))
    ):
        raise DecodeError(f"snapshot row has a malformed column {item!r:.80}")
    name, type_name, oid, text = item
    value: ColumnValue = text
    if text is not None and oid == _BYTEA_OID:
        try:
            value = bytea_from_text(text)
        except ValueError:
            raise DecodeError(f"snapshot row's bytea column {name!r} is not bytea text") from None
    return ChangeColumn(name, wal2json_type_name(type_name), oid, wal2json_value(oid, value))


def _key_text(value: ColumnValue) -> str | None:
    """A key value as the snapshot command read it (bytea keys as their hex text)."""
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return value
