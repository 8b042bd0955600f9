"""What a row gives the router besides its templates' values: the message id, the
payload, the entries of its headers column, as the text JetStream gets."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping

from cdc_bridge.core.changes import ColumnValue
from cdc_bridge.core.headers import HEADER_NAME, controls_jetstream, reserved_by_bridge
from cdc_bridge.core.wire_text import id_problem, shown, utf8_size
from cdc_bridge.routing.rules import HEADER_VALUE_RULE, MISSING, UNSAFE_HEADER_VALUE, Rejected, clip

# The fixed part of a NATS header block ("NATS/1.0\r\n" ... "\r\n"), and the id header
# the publisher adds; both count against max_payload.
_HEADER_BLOCK_OVERHEAD = len("NATS/1.0\r\n\r\n")


_MSG_ID_HEADER = len("Nats-Msg-Id: \r\n")


def payload_data(column: str | None, row: Mapping[str, ColumnValue]) -> bytes:
    if column is None:
        return row_json(row)
    value = row.get(column, MISSING)
    if isinstance(value, str):
        return _utf8(value, column)
    if isinstance(value, bytes):
        return value
    if value is None:
        return b""  # a NULL payload is allowed: the event is in the subject and headers
    raise Rejected(f"payload column {column!r} is not in the row")


def safe_data(column: str, row: Mapping[str, ColumnValue]) -> bytes:
    try:
        return payload_data(column, row)
    except Rejected:
        return b""


def row_json(row: Mapping[str, ColumnValue]) -> bytes:
    # Values are PostgreSQL's text form (a jsonb column arrives as a JSON string, not
    # a nested object). JSON has no bytes, so bytea values become base64 strings.
    document = {
        column: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for column, value in row.items()
    }
    return _utf8(json.dumps(document, ensure_ascii=False, separators=(",", ":")), None)


def _utf8(text: str, column: str | None) -> bytes:
    """``text`` in UTF-8: the payload column's value (``column``) or the row as JSON (None);
    the reason names which only when there is one (this runs once per event)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, from JSON's "\ud800" escape
        bad = shown(exc.object[exc.start : exc.end])
        where = "the row" if column is None else f"payload column {column!r}"
        raise Rejected(
            f"{where} holds text that is not valid Unicode ({bad} at character {exc.start})"
        ) from None


def id_text(column: str, row: Mapping[str, ColumnValue]) -> str:
    value = row.get(column, MISSING)
    if value is MISSING:
        raise Rejected(f"id column {column!r} is not in the row")
    row_id = id_or_none(value)
    if row_id is None:
        raise Rejected(f"NULL id column {column!r}")
    problem = id_problem(row_id)
    if problem is not None:
        raise Rejected(problem)
    return row_id


def id_or_none(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return None


def null_id(table: str, row: Mapping[str, ColumnValue]) -> str:
    """A deterministic id for a row without one, so replays of it deduplicate."""
    canonical = json.dumps(
        [table, sorted((k, v.hex() if isinstance(v, bytes) else v) for k, v in row.items())],
        separators=(",", ":"),
    )
    return "null-id:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def column_headers(
    column: str | None,
    row: Mapping[str, ColumnValue],
    on_reserved: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """The entries of a row's headers column. The bridge's own names (any spelling) are
    left out, and ``on_reserved`` told of each."""
    raw = row.get(column) if column is not None else None
    if raw is None:  # no headers column, or NULL in it
        return {}
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise Rejected(f"invalid JSON in headers column {column!r}: {exc}") from None
    if not isinstance(parsed, dict):
        raise Rejected(
            f"headers column {column!r} holds JSON {type(parsed).__name__}, not an object"
        )
    headers: dict[str, str] = {}
    for name, value in parsed.items():
        if not isinstance(value, str):
            continue  # only string entries are headers; numbers etc. are ignored
        if not HEADER_NAME.fullmatch(name):
            raise Rejected(f"invalid header name in headers column: {clip(name)}")
        if name.lower() == "nats-msg-id":
            continue  # the id column decides deduplication, not the row's headers
        if reserved_by_bridge(name):
            if on_reserved is not None:
                on_reserved(name)
            continue
        if controls_jetstream(name):
            raise Rejected(
                f"header {clip(name)} in headers column {column!r} is reserved: "
                "Nats-* headers control JetStream"
            )
        if UNSAFE_HEADER_VALUE.search(value):
            raise Rejected(
                f"unsafe value for header {name!r} in headers column {column!r}: "
                f"{clip(value)} ({HEADER_VALUE_RULE})"
            )
        headers[name] = value
    return headers


def headers_size(headers: Mapping[str, str], msg_id: str) -> int:
    size = _HEADER_BLOCK_OVERHEAD + _MSG_ID_HEADER + utf8_size(msg_id)
    for name, value in headers.items():
        # ": " and "\r\n"; names are ASCII, values are measured in UTF-8 bytes.
        size += len(name) + utf8_size(value) + 4
    return size
