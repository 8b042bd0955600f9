"""Logical decoding messages as outbox events: an outbox without a table.

An application emits an event inside its transaction with::

    SELECT pg_logical_emit_message(true, 'orders', '{"aggregate_type": "order", ...}');

Nothing is stored in a table, and the event is still atomic with the business write.
Transactional messages whose prefix is in ``outbox.message_prefixes`` become events;
their content is a JSON object, the *envelope*::

    {
      "aggregate_type": "order",          required, string
      "aggregate_id": "O-1",              required, string
      "event_type": "placed",             required, string
      "payload": {"total": 12.5},         required, any JSON value
      "id": "5f0c...",                    optional string: the Nats-Msg-Id
      "headers": {"Trace-Id": "abc"}      optional object: message headers, as the
    }                                     headers column of an outbox row

Any other key is refused, so that a misspelt optional key is noticed, not dropped.

An envelope becomes a row like an outbox row, which the routes see with the table name
``message:<prefix>`` (so ``when: {table: "message:orders"}`` picks them out):
``aggregate_type``, ``aggregate_id``, ``event_type``, and under the configured
``outbox.id_column``, ``payload_column`` and ``headers_column`` names the id, the payload
and the headers. The payload is published as the JSON text of the payload value exactly
as it appears in the message (a string payload is a JSON string, quotes included, just
as a jsonb payload column holding one). The headers are their JSON text, read by the
router as it reads a headers column.

Without an ``id`` the event gets a deterministic one, ``<commit LSN>-<index>`` (e.g.
``0/16B3748-0``, the index being the event's ``Cdc-Index`` in its transaction), so a
replay after a restart deduplicates. Content that is not a valid envelope still yields
an event: ``problem`` says what is wrong, and the pipeline sends the raw content to the
dead letter subject (or stops on it when there is none), as it does for a bad row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cdc_bridge.core.changes import ColumnValue
from cdc_bridge.core.lsn import format_lsn

MESSAGE_TABLE_PREFIX = "message:"
REQUIRED_STRINGS = ("aggregate_type", "aggregate_id", "event_type")
_KNOWN_KEYS = frozenset((*REQUIRED_STRINGS, "payload", "id", "headers"))
_JSON_WHITESPACE = " \t\n\r"


@dataclass(frozen=True, slots=True)
class EnvelopeColumns:
    """The row columns the envelope's id, payload and headers go to (outbox.*_column)."""

    id: str = "id"
    payload: str = "payload"
    headers: str | None = "headers"  # None: headers are not read from rows

    def names(self) -> frozenset[str]:
        """Every column the row of a valid envelope has."""
        optional = (self.headers,) if self.headers is not None else ()
        return frozenset((self.id, *REQUIRED_STRINGS, self.payload, *optional))


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """One logical decoding message as an outbox event."""

    table: str  # "message:<prefix>", the table name routes match
    row: dict[str, ColumnValue]
    msg_id: str  # the envelope's id, or the deterministic one
    content: bytes  # the message as emitted: the dead letter's body when it is invalid
    problem: str | None = None  # why the content is not a valid envelope; None if it is


def message_table(prefix: str) -> str:
    return MESSAGE_TABLE_PREFIX + prefix


def default_message_id(commit_lsn: int, index: int) -> str:
    """The Nats-Msg-Id of an envelope without an id: ``<commit LSN>-<index>``."""
    return f"{format_lsn(commit_lsn)}-{index}"


def message_event(
    prefix: str, content: bytes, *, default_id: str, columns: EnvelopeColumns
) -> MessageEvent:
    """The event for a message's content; ``problem`` is set when it is not an envelope."""
    table = message_table(prefix)
    try:
        members = _object_members(content)
    except _InvalidEnvelope as invalid:
        return _invalid(table, content, default_id, columns, str(invalid))
    given_id = members.get("id", (None, ""))[0]
    msg_id = given_id if isinstance(given_id, str) and given_id else default_id
    problem = _envelope_problem(members)
    if problem is not None:
        return _invalid(table, content, msg_id, columns, problem)
    row: dict[str, ColumnValue] = {columns.id: msg_id}
    for key in REQUIRED_STRINGS:
        value = members[key][0]
        assert isinstance(value, str)  # _envelope_problem checked it
        row[key] = value
    row[columns.payload] = members["payload"][1]
    if columns.headers is not None:
        headers = members.get("headers")
        row[columns.headers] = None if headers is None or headers[0] is None else headers[1]
    return MessageEvent(table, row, msg_id, content)


def _invalid(
    table: str, content: bytes, msg_id: str, columns: EnvelopeColumns, problem: str
) -> MessageEvent:
    row: dict[str, ColumnValue] = {columns.id: msg_id, columns.payload: content}
    return MessageEvent(table, row, msg_id, content, problem)


def _envelope_problem(members: dict[str, tuple[object, str]]) -> str | None:
    unknown = sorted(members.keys() - _KNOWN_KEYS)
    if unknown:
        return (
            f"unknown key {unknown[0]!r} (an envelope has {', '.join(REQUIRED_STRINGS)}, "
            "payload, and optionally id and headers)"
        )
    for key in REQUIRED_STRINGS:
        if key not in members:
            return f"missing key {key!r}"
        value = members[key][0]
        if not isinstance(value, str):
            return f"{key!r} must be a string, got {_json_type(value)}"
    if "payload" not in members:
        return "missing key 'payload'"
    given_id = members.get("id", (None, ""))[0]
    if given_id is not None and not (isinstance(given_id, str) and given_id):
        return f"'id' must be a non-empty string, got {_json_type(given_id)}"
    headers = members.get("headers", (None, ""))[0]
    if headers is not None and not isinstance(headers, dict):
        return f"'headers' must be a JSON object, got {_json_type(headers)}"
    return None


class _InvalidEnvelope(Exception):
    pass


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# NaN and Infinity are not JSON: a payload holding them could not be read by consumers.
_json = json.JSONDecoder(parse_constant=_reject_constant)


def _object_members(content: bytes) -> dict[str, tuple[object, str]]:
    """The top-level members of a JSON object: key -> (value, the value's exact text).

    Walks the object by hand and lets ``raw_decode`` read each key and value, because
    the payload is published as the text the application wrote, which ``json.loads``
    alone would not give back (number forms, spacing, key order).
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _InvalidEnvelope(
            f"content is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        return _walk_object(text)
    except ValueError as exc:  # JSONDecodeError and our own refusals
        raise _InvalidEnvelope(f"content is not a JSON object: {exc}") from None
    except RecursionError:
        raise _InvalidEnvelope("content is not a JSON object: nested too deeply") from None


def _walk_object(text: str) -> dict[str, tuple[object, str]]:
    pos = _skip_whitespace(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError(f"expected '{{' at offset {pos}")
    members: dict[str, tuple[object, str]] = {}
    pos = _skip_whitespace(text, pos + 1)
    if text[pos : pos + 1] == "}":
        return _expect_end(text, pos + 1, members)
    while True:
        if text[pos : pos + 1] != '"':
            raise ValueError(f"expected a key at offset {pos}")
        key, pos = _json.raw_decode(text, pos)
        pos = _skip_whitespace(text, pos)
        if text[pos : pos + 1] != ":":
            raise ValueError(f"expected ':' at offset {pos}")
        start = _skip_whitespace(text, pos + 1)
        value, end = _json.raw_decode(text, start)
        if key in members:
            raise ValueError(f"duplicate key {key!r}")
        members[key] = (value, text[start:end])
        pos = _skip_whitespace(text, end)
        separator = text[pos : pos + 1]
        if separator == "}":
            return _expect_end(text, pos + 1, members)
        if separator != ",":
            raise ValueError(f"expected ',' or '}}' at offset {pos}")
        pos = _skip_whitespace(text, pos + 1)


def _expect_end(
    text: str, pos: int, members: dict[str, tuple[object, str]]
) -> dict[str, tuple[object, str]]:
    end = _skip_whitespace(text, pos)
    if end != len(text):
        raise ValueError(f"unexpected text after the object at offset {end}")
    return members


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_WHITESPACE:
        pos += 1
    return pos


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"
