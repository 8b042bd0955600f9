"""CloudEvents 1.0 in the two content modes of the CloudEvents NATS protocol binding.

A route with ``format: cloudevents`` (binary mode) publishes each context attribute as a
``ce-<name>`` header, its value percent-encoded as the HTTP binding's section 3.1.3.2 says
(the NATS binding refers to it), the event data as the body unchanged, and the data's
media type as ``content-type``. ``format: cloudevents-structured`` publishes the JSON
event format as the body, with ``content-type: application/cloudevents+json``.

The router renders what comes from the row (``draft``); the pipeline then adds what
only it knows (``PendingEvent.finish``): the transaction position, as the extensions
``cdclsn`` and ``cdcindex``, and the commit time when the row has no ``created_at``. The
bridge's own headers (Nats-Msg-Id, Cdc-*) stay on every message, in both modes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Protocol
from urllib.parse import quote

from cdc_bridge.core.changes import ColumnValue, EventPosition

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
JSON_CONTENT_TYPE = "application/json"
BYTES_CONTENT_TYPE = "application/octet-stream"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
_STRUCTURED_LINE = f"content-type: {STRUCTURED_CONTENT_TYPE}\r\n"
# json.dumps with these options makes an encoder per call: one, kept, for every event.
_ATTRIBUTES_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
TIME_COLUMN = "created_at"
LSN_EXTENSION = "cdclsn"
INDEX_EXTENSION = "cdcindex"

# HTTP binding 3.1.3.2: printable ASCII is safe except space, '"' and '%'; the rest is
# percent-encoded as UTF-8 octets.
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
_NEEDS_ENCODING = re.compile(r"[^!#-$&-~]")  # not in _HEADER_SAFE
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# PostgreSQL's text of timestamp(tz) in the ISO DateStyle: "2026-12-01 22:40:33.12+01".
_TIMESTAMP = re.compile(
    r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d(?:\.\d{1,9})?)(?:([+-]\d\d)(?::?(\d\d))?(?::\d\d)?)?"
)
# What the position and the attributes the pipeline adds cost at most, in bytes: the
# router's max_payload check counts it before the event is finished.
POSITION_ALLOWANCE = 200

Render = Callable[[str, Mapping[str, ColumnValue]], str]


class InvalidEvent(Exception):
    """The row cannot make a valid CloudEvent: it is dead-lettered with this reason."""


class PendingEvent(Protocol):
    """A message body (and headers) that is complete once its position is known."""

    def finish(self, at: EventPosition) -> tuple[bytes, str]:
        """The body, and header lines to add to the bridge's own."""
        ...

    def size_bound(self) -> int:
        """At most how many bytes ``finish`` adds, for the router's max_payload check."""
        ...


@dataclass(frozen=True, slots=True)
class EventFormat:
    """One route's CloudEvents format, compiled once at start-up."""

    structured: bool
    source: Render
    type: Render
    change_type: Render  # the default type of a change event: no event_type column
    subject: Render | None  # None: {aggregate_id} when the row has it, else left out
    extensions: tuple[tuple[str, Render], ...]
    content_type: str | None  # cloudevents.datacontenttype; None: by the payload

    def draft(
        self,
        table: str,
        row: Mapping[str, ColumnValue],
        data: bytes | PendingEvent | None,
        msg_id: str,
        *,
        change: bool,
        payload: str | None = None,
        known_json: bool = False,
    ) -> CloudEvent:
        """The event's attributes from the row; raises InvalidEvent (or the router's
        rejection from a template) when the row cannot make a valid event. ``payload``
        names the payload column the data came from (None: the bridge made it);
        ``known_json``: it is a json or jsonb column, so its text needs no parse."""
        source = self.source(table, row)
        if not source:
            raise InvalidEvent("the CloudEvents source renders empty (cloudevents.source)")
        event_type = (self.change_type if change else self.type)(table, row)
        if not event_type:
            raise InvalidEvent("the CloudEvents type renders empty (cloudevents.type)")
        attributes = {"id": msg_id, "source": source, "type": event_type}
        subject = self._subject(table, row)
        if subject:
            attributes["subject"] = subject
        time = _row_time(row.get(TIME_COLUMN))
        content_type = self._content_type(row, data, payload, known_json)
        if content_type is not None:
            attributes["datacontenttype"] = content_type
        for name, render in self.extensions:
            attributes[name] = render(table, row)
        return CloudEvent(self.structured, attributes, time, data)

    def _subject(self, table: str, row: Mapping[str, ColumnValue]) -> str | None:
        if self.subject is not None:
            return self.subject(table, row)
        value = row.get("aggregate_id")
        return value if isinstance(value, str) else None

    def _content_type(
        self,
        row: Mapping[str, ColumnValue],
        data: bytes | PendingEvent | None,
        payload: str | None,
        known_json: bool,
    ) -> str | None:
        if data is None:
            return None  # no data (a NULL payload): no datacontenttype either
        if payload is None or not isinstance(data, bytes):
            return self.content_type or JSON_CONTENT_TYPE  # the bridge made it: JSON
        if self.content_type is not None:
            if self.structured and not known_json and _is_json_type(self.content_type):
                check_json_data(data, payload)
            return self.content_type
        if known_json:  # a json or jsonb column: PostgreSQL checked it (no parse per event)
            return JSON_CONTENT_TYPE
        if isinstance(row.get(payload), bytes):
            return BYTES_CONTENT_TYPE
        # A text column (or a logical message's payload, of no known type) may hold JSON.
        return JSON_CONTENT_TYPE if _is_json(data) else TEXT_CONTENT_TYPE


@dataclass(slots=True, init=False)  # __init__ written out: one per event (core/changes.py)
class CloudEvent:
    """One event, waiting for its position (``finish``)."""

    structured: bool
    attributes: dict[str, str]  # id, source, type, [subject], [datacontenttype], extensions
    time: str | None  # RFC 3339, from the row; None: the commit time
    data: bytes | PendingEvent | None

    def __init__(
        self,
        structured: bool,
        attributes: dict[str, str],
        time: str | None,
        data: bytes | PendingEvent | None,
    ) -> None:
        self.structured = structured
        self.attributes = attributes
        self.time = time
        self.data = data

    def size_bound(self) -> int:
        """At most what ``finish`` adds to the raw data, for the max_payload check."""
        attributes = sum(len(k) + len(v.encode()) * 3 + 8 for k, v in self.attributes.items())
        inner = 0 if self.data is None or isinstance(self.data, bytes) else self.data.size_bound()
        return attributes + inner + POSITION_ALLOWANCE

    def finish(self, at: EventPosition) -> tuple[bytes, str]:
        data = self.data
        if data is not None and not isinstance(data, bytes):
            data = data.finish(at)[0]  # a Debezium envelope, say
        attributes = {"specversion": SPECVERSION, **self.attributes}
        time = self.time if self.time is not None else _commit_time(at.commit_time)
        if time is not None:
            attributes["time"] = time
        attributes[LSN_EXTENSION] = at.lsn_text
        attributes[INDEX_EXTENSION] = str(at.index)
        if self.structured:
            return self._structured(attributes, data), _STRUCTURED_LINE
        content_type = attributes.pop("datacontenttype", None)
        lines = [f"ce-{name}: {header_value(value)}\r\n" for name, value in attributes.items()]
        if content_type is not None:
            lines.append(f"content-type: {content_type}\r\n")
        return data or b"", "".join(lines)

    def _structured(self, attributes: dict[str, str], data: bytes | None) -> bytes:
        body = _ATTRIBUTES_JSON.encode(attributes)
        if data is None:
            return body.encode()
        content_type = attributes.get("datacontenttype", "")
        if _is_json_type(content_type):
            # JSON data goes in as it is: the bridge made it, or it was checked in draft.
            return body[:-1].encode() + b',"data":' + data + b"}"
        member = None
        if content_type.startswith("text/"):
            with contextlib.suppress(UnicodeDecodeError):
                member = ',"data":' + encode_basestring(data.decode("utf-8"))
        if member is None:  # binary data (bytea): data_base64, as the JSON format says
            member = ',"data_base64":"' + base64.b64encode(data).decode("ascii") + '"'
        return (body[:-1] + member + "}").encode()


def header_value(value: str) -> str:
    """An attribute's value as its ``ce-`` header carries it (percent-encoded)."""
    if _NEEDS_ENCODING.search(value) is None:
        return value
    return quote(value, safe=_HEADER_SAFE)


def check_json_data(data: bytes, column: str) -> None:
    """Structured mode embeds JSON data as JSON: a payload column that claims to be JSON
    must be JSON, or the whole event would be unreadable."""
    if not _is_json(data):
        raise InvalidEvent(
            f"payload column {column!r} is not JSON, so it cannot be the data of a "
            "CloudEvent as application/json (set cloudevents.datacontenttype for other data)"
        )


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def _is_json_type(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == JSON_CONTENT_TYPE or media.endswith("+json")


def _row_time(value: ColumnValue) -> str | None:
    """``created_at``'s text as RFC 3339; None when missing or not a timestamp. A value
    without an offset (timestamp without time zone) is taken as UTC."""
    if not isinstance(value, str):
        return None
    found = _TIMESTAMP.fullmatch(value)
    if found is None:
        return None
    date, clock, hours, minutes = found.groups()
    offset = (
        "Z"
        if hours is None or (hours in ("+00", "-00") and minutes in (None, "00"))
        else (f"{hours}:{minutes or '00'}")
    )
    return f"{date}T{clock}{offset}"


def _commit_time(microseconds: int) -> str | None:
    if not microseconds:
        return None  # the plugin did not say: `time` is optional
    moment = _POSTGRES_EPOCH + timedelta(microseconds=microseconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
