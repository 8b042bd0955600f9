"""Routing: an outbox row -> what to publish (subject, headers, data, message id).

Rules are compiled once from the config; ``Router.route`` is then a pure function of
the row and sits on the hot path, so it does set lookups, one regex search per
substituted value and a join, nothing more.

A row that cannot be published as configured (no route, NULL id, a value that would
change the subject's shape, a payload over the server's limit...) goes to the dead
letter subject with the reason in a ``Cdc-Error`` header, or, without a dead letter
subject, comes back as ``Poison`` for the caller to stop on.

Changes of ``outbox.change_tables`` go through ``route_change``: the same rules, on the
change's row plus ``action`` (change_events.routing_row); ``payload: change`` publishes
the wal2json-shaped change, and the message id is ``<commit LSN>-<index>`` unless the
route names its ``id`` column; ``payload: debezium`` publishes it in Debezium's envelope
(debezium.py).

Templates and ``when`` may read inside a json/jsonb column (``{payload.customer.region}``).
Only a config with such paths pays for them: the JSON of a column is parsed at most once
per row, when a path into it is first read, and shared by every ``when`` and template.

A route's ``format`` (compiled once, like the rest) may make the message a CloudEvent
(cloudevents.py). Such messages, and Debezium envelopes, come back with ``event`` set:
the pipeline finishes them with the transaction position it alone knows. Plain messages
have ``event`` None and cost nothing more.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cdc_bridge.config.model import BridgeConfig, RouteConfig
from cdc_bridge.config.schema import (
    BUILT_PAYLOADS,
    CHANGE_PAYLOADS,
    CLOUDEVENTS_STRUCTURED_FORMAT,
    DEBEZIUM_PAYLOAD,
    PLAIN_FORMAT,
)
from cdc_bridge.core.changes import ColumnValue, RowChange
from cdc_bridge.core.headers import HEADER_NAME, controls_jetstream
from cdc_bridge.core.templates import (
    ACTION_PSEUDO_COLUMN,
    TABLE_PSEUDO_COLUMN,
    Template,
    split_path,
)
from cdc_bridge.routing.change_events import change_json, routing_row
from cdc_bridge.routing.cloudevents import EventFormat, InvalidEvent, PendingEvent
from cdc_bridge.routing.debezium import debezium_event

DEAD_LETTER_ROUTE = "dead_letter"
# Cdc-Subject of a dead letter no route was applied to (no route matched, or a logical
# message that is not an envelope).
NO_ROUTE_SUBJECT = "(no route)"

# What one subject token may not be or contain (\A\Z: the empty string); NATS itself
# only rejects ASCII whitespace, refusing all of \s is stricter and costs nothing.
_UNSAFE_SUBJECT_VALUE = re.compile(r"\A\Z|[.*>\s\x00-\x1f\x7f]")
_UNSAFE_HEADER_VALUE = re.compile(r"[\r\n]")
_NOTHING_UNSAFE = re.compile(r"(?!)")  # CloudEvents attributes: any text
_SUBJECT_TOKEN_RULE = "a subject token may not be empty or contain '.', '*', '>' or whitespace"
_HEADER_VALUE_RULE = "a header value may not contain CR or LF"
_REASON_VALUE_LIMIT = 60
_REASON_LIMIT = 500

# The fixed part of a NATS header block ("NATS/1.0\r\n" ... "\r\n"), and the id header
# the publisher adds; both count against max_payload.
_HEADER_BLOCK_OVERHEAD = len("NATS/1.0\r\n\r\n")
_MSG_ID_HEADER = len("Nats-Msg-Id: \r\n")
_MISSING = object()
_UNPARSED = object()  # a JSON column of this row no path has read yet
# One decoder for every row (json.loads with options builds one per call: twice the
# cost); numbers keep the text PostgreSQL wrote (1.50 is not turned into 1.5).
_JSON_TEXT_NUMBERS = json.JSONDecoder(parse_int=str, parse_float=str)
_SAFE_VALUES_KEPT = 10_000  # per template


@dataclass(slots=True)  # not frozen: one per event, and frozen init costs a call per field
class Outbound:
    """One message to publish; the publisher adds ``Nats-Msg-Id: msg_id`` itself."""

    subject: str
    data: bytes
    headers: dict[str, str]  # column headers, then route headers over them
    msg_id: str  # Nats-Msg-Id
    route: str  # route name, or "dead_letter"
    dead_letter_reason: str | None = None  # set when this is a dead-letter message
    # A CloudEvent or Debezium envelope: the pipeline finishes it (data, more headers).
    event: PendingEvent | None = None


@dataclass(frozen=True, slots=True)
class Poison:
    """A row that cannot be published and has nowhere else to go (no dead_letter)."""

    row_id: str | None
    reason: str


class _Rejected(Exception):
    """Raised inside route(): the row goes to the dead letter subject for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Path:
    """A path into a JSON column: ``payload.customer.region``."""

    text: str  # as written, and the key its value is found under in a route's values
    column: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Composite:
    """A path's value that is a JSON object or array: no single text to use."""

    kind: str  # "object" or "array"


@dataclass(frozen=True, slots=True)
class _Condition:
    column: str  # a column, or a path's text
    exact: frozenset[str]
    glob: Callable[[str], re.Match[str] | None] | None  # all glob patterns as one regex
    path: _Path | None = None

    def matches(self, value: object) -> bool:
        # NULL and bytea never match: a pattern is text.
        if not isinstance(value, str):
            return False
        if value in self.exact:
            return True
        return self.glob is not None and self.glob(value) is not None


@dataclass(frozen=True, slots=True)
class _CompiledTemplate:
    """A template split for rendering by one join: ``first`` + (value, literal)..."""

    first: str
    rest: tuple[tuple[str, str], ...]  # (column, the literal text after its value)
    unsafe: Callable[[str], re.Match[str] | None]
    where: str  # "subject" or "header 'Name'", for reasons
    rule: str
    # Values already found safe (each maps to itself): event types and the like repeat
    # on nearly every row, so most renders skip the checks. Bounded; past the bound,
    # values are checked anew.
    safe: dict[object, str] = field(default_factory=dict)

    def render(self, table: str, row: Mapping[str, ColumnValue]) -> str:
        if not self.rest:
            return self.first
        safe = self.safe
        pieces = [self.first]
        for column, literal in self.rest:
            value = table if column == TABLE_PSEUDO_COLUMN else row.get(column, _MISSING)
            text = safe.get(value)
            if text is None:
                text = self._checked(column, value)
                if len(safe) < _SAFE_VALUES_KEPT:
                    safe[text] = text
            pieces.append(text)
            pieces.append(literal)
        return "".join(pieces)

    def shown(self, table: str, row: Mapping[str, ColumnValue]) -> str:
        """The template filled in for a dead letter's ``Cdc-Subject``: usable values in
        place, each unusable one as ``{column=value}`` (``'bad.type'``, ``NULL``,
        ``bytea``; ``{column}`` alone when the row lacks it). Never raises."""
        pieces = [self.first]
        for column, literal in self.rest:
            value = table if column == TABLE_PSEUDO_COLUMN else row.get(column, _MISSING)
            if isinstance(value, str) and not self.unsafe(value):
                pieces.append(value)
            elif value is _MISSING:
                pieces.append(f"{{{column}}}")
            else:
                pieces.append(f"{{{column}={_shown_value(value)}}}")
            pieces.append(literal)
        return "".join(pieces)

    def _checked(self, column: str, value: object) -> str:
        if not isinstance(value, str):
            raise _Rejected(_unusable(column, value, self.where))
        if self.unsafe(value):
            raise _Rejected(
                f"unsafe value for {{{column}}} in {self.where}: {_clip(value)} ({self.rule})"
            )
        return value


@dataclass(frozen=True, slots=True)
class _CompiledRoute:
    name: str
    conditions: tuple[_Condition, ...]
    subject: _CompiledTemplate
    headers: tuple[tuple[str, _CompiledTemplate], ...]
    payload_column: str | None  # None: the whole row as JSON (or the change)
    id_column: str
    publishes_change: bool  # payload: change or debezium
    debezium: bool  # payload: debezium
    id_given: bool  # the route names its id column (change events use it only then)
    event_format: EventFormat | None  # None: format: plain
    paths: tuple[_Path, ...] = ()  # the JSON paths its templates read
    when_reads_paths: bool = False


class Router:
    """Compiled routing rules: ``route(table, row)`` for each outbox insert."""

    def __init__(self, config: BridgeConfig, *, max_payload: int = 1024 * 1024) -> None:
        self.max_payload = max_payload  # the server's value replaces this at connect time
        self._database = config.postgres.database
        self._routes = tuple(_compile_route(route, self._database) for route in config.routes)
        self._default_id_column = config.outbox.id_column
        self._default_payload_column = config.outbox.payload_column
        self._headers_column = config.outbox.headers_column
        self._dead_letter_subject = (
            config.dead_letter.subject if config.dead_letter is not None else None
        )
        self.route_names = tuple(route.name for route in self._routes)
        self._reads_paths = any(r.paths or r.when_reads_paths for r in self._routes)

    def route(self, table: str, row: Mapping[str, ColumnValue]) -> Outbound | Poison:
        """The message for this row, its dead letter, or Poison (no dead_letter)."""
        values = row  # what templates read: the row, plus its JSON paths' values
        if self._reads_paths:
            compiled, values = self._match_with_paths(table, row)
        else:
            compiled = self._match(table, row)
        if compiled is None:
            data = _safe_data(self._default_payload_column, row)
            return self._reject(table, row, self._default_id_column, "no route matches", data)
        if compiled.publishes_change:
            data = _safe_data(self._default_payload_column, row)
            payload = DEBEZIUM_PAYLOAD if compiled.debezium else "change"
            reason = (
                f"route {compiled.name!r} publishes change events (payload: {payload}), and "
                f"{table} is not in outbox.change_tables"
            )
            intended = compiled.subject.shown(table, values)
            return self._reject(table, row, compiled.id_column, reason, data, intended)
        if compiled.event_format is not None:
            return self._route_event(compiled, compiled.event_format, table, row, values)
        data = b""
        subject: str | None = None
        try:
            data = _payload_data(compiled.payload_column, row)
            msg_id = _id_text(compiled.id_column, row)
            subject = compiled.subject.render(table, values)
            headers = self._headers(compiled, table, row, values)
        except _Rejected as rejected:
            if subject is None:
                subject = compiled.subject.shown(table, values)
            return self._reject(table, row, compiled.id_column, rejected.reason, data, subject)
        size = len(data) + _headers_size(headers, msg_id)
        if size > self.max_payload:
            reason = f"payload of {size} bytes exceeds the server's max_payload {self.max_payload}"
            return self._reject(table, row, compiled.id_column, reason, b"", subject)
        return Outbound(subject, data, headers, msg_id, compiled.name)

    def _route_event(
        self,
        compiled: _CompiledRoute,
        event_format: EventFormat,
        table: str,
        row: Mapping[str, ColumnValue],
        values: Mapping[str, ColumnValue],
    ) -> Outbound | Poison:
        """``route`` for a route with a CloudEvents format: apart, so that plain routes
        pay one test for it. ``values`` is what templates read (the row and its paths)."""
        data = b""
        subject: str | None = None
        column = compiled.payload_column
        try:
            data = _payload_data(column, row)
            msg_id = _id_text(compiled.id_column, row)
            subject = compiled.subject.render(table, values)
            headers = _without_attribute_headers(self._headers(compiled, table, row, values))
            given = None if column is not None and row.get(column) is None else data
            event = _draft(event_format, table, row, given, msg_id, column)
        except _Rejected as rejected:
            if subject is None:
                subject = compiled.subject.shown(table, values)
            return self._reject(table, row, compiled.id_column, rejected.reason, data, subject)
        size = len(data) + _headers_size(headers, msg_id) + event.size_bound()
        if size > self.max_payload:
            reason = f"payload of {size} bytes exceeds the server's max_payload {self.max_payload}"
            return self._reject(table, row, compiled.id_column, reason, b"", subject)
        return Outbound(subject, data, headers, msg_id, compiled.name, None, event)

    def route_change(self, change: RowChange, default_id: str) -> Outbound | Poison:
        """The message for a change of a change table, its dead letter, or Poison.

        ``default_id`` is the id without a route ``id``: ``<commit LSN>-<index>``. Rows
        of a changed table carry no message headers: only the route's headers apply.
        """
        table = change.table
        row = routing_row(change)
        values: Mapping[str, ColumnValue] = row
        if self._reads_paths:
            compiled, values = self._match_with_paths(table, row)
        else:
            compiled = self._match(table, row)
        if compiled is None:
            return self._reject_change(default_id, "no route matches", change_json(change))
        msg_id = default_id
        data = b""
        subject: str | None = None
        event: PendingEvent | None = None
        try:
            if compiled.debezium:
                event = debezium_event(change, self._database)
            elif compiled.publishes_change:
                data = change_json(change)
            else:
                data = _payload_data(compiled.payload_column, row)
            if compiled.id_given:
                msg_id = _id_text(compiled.id_column, row)
            subject = compiled.subject.render(table, values)
            headers = {name: t.render(table, values) for name, t in compiled.headers}
            if compiled.event_format is not None:
                column = compiled.payload_column
                given: bytes | PendingEvent | None = event or data
                if column is not None and row.get(column) is None:
                    given = None
                event = _draft(compiled.event_format, table, row, given, msg_id, column, True)
        except _Rejected as rejected:
            if subject is None:
                subject = compiled.subject.shown(table, values)
            if compiled.debezium and not data:
                data = change_json(change)  # the change itself, as payload: change has it
            return self._reject_change(msg_id, rejected.reason, data, subject)
        size = len(data) + _headers_size(headers, msg_id)
        if event is not None:
            size += event.size_bound()
        if size > self.max_payload:
            reason = f"payload of {size} bytes exceeds the server's max_payload {self.max_payload}"
            return self._reject_change(msg_id, reason, b"", subject)
        return Outbound(subject, data, headers, msg_id, compiled.name, None, event)

    def _reject_change(
        self, msg_id: str, reason: str, data: bytes, subject: str | None = None
    ) -> Outbound | Poison:
        if self._dead_letter_subject is None:
            return Poison(msg_id, reason)
        return self._dead_letter_message(reason, msg_id, data, subject)

    def dead_letter(self, original: Outbound, reason: str, row_id: str) -> Outbound | Poison:
        """Redirect a message the server refused for good (e.g. no stream for its subject)."""
        if self._dead_letter_subject is None or original.route == DEAD_LETTER_ROUTE:
            # A dead letter that cannot be published has nowhere further to go.
            return Poison(row_id, reason)
        return self._dead_letter_message(reason, row_id, original.data, original.subject)

    def _match(self, table: str, row: Mapping[str, ColumnValue]) -> _CompiledRoute | None:
        for compiled in self._routes:
            for condition in compiled.conditions:
                column = condition.column
                value = table if column == TABLE_PSEUDO_COLUMN else row.get(column)
                if not condition.matches(value):
                    break
            else:
                return compiled
        return None

    def _match_with_paths(
        self, table: str, row: Mapping[str, ColumnValue]
    ) -> tuple[_CompiledRoute | None, Mapping[str, ColumnValue]]:
        """``_match`` for configs that read JSON paths; with the matched route, the row
        plus the values of the paths its templates read (keyed by the path's text)."""
        documents: dict[str, object] = {}  # column -> its parsed JSON, for this row only
        for compiled in self._routes:
            for condition in compiled.conditions:
                if condition.path is not None:
                    value = _path_value(condition.path, row, documents)
                else:
                    column = condition.column
                    value = table if column == TABLE_PSEUDO_COLUMN else row.get(column)
                if not condition.matches(value):
                    break
            else:
                if not compiled.paths:
                    return compiled, row
                values: dict[str, object] = dict(row)
                for path in compiled.paths:
                    values[path.text] = _path_value(path, row, documents)
                # Path values are text, None or markers the templates turn into reasons.
                return compiled, typing.cast(Mapping[str, ColumnValue], values)
        return None, row

    def _headers(
        self,
        compiled: _CompiledRoute,
        table: str,
        row: Mapping[str, ColumnValue],
        values: Mapping[str, ColumnValue],
    ) -> dict[str, str]:
        headers = _column_headers(self._headers_column, row)
        for name, template in compiled.headers:
            headers[name] = template.render(table, values)
        return headers

    def _reject(
        self,
        table: str,
        row: Mapping[str, ColumnValue],
        id_column: str,
        reason: str,
        data: bytes,
        subject: str | None = None,
    ) -> Outbound | Poison:
        row_id = _id_or_none(row.get(id_column))
        if self._dead_letter_subject is None:
            return Poison(row_id, reason)
        msg_id = row_id if row_id is not None else _null_id(table, row)
        return self._dead_letter_message(reason, msg_id, data, subject)

    def _dead_letter_message(
        self, reason: str, msg_id: str, data: bytes, intended_subject: str | None
    ) -> Outbound:
        assert self._dead_letter_subject is not None
        # The reason travels in a header: no line breaks, bounded length.
        reason = reason.replace("\r", " ").replace("\n", " ")[:_REASON_LIMIT]
        # Every dead letter names where it was meant to go, so consumers need no special
        # case; a value with a space can never be taken for a real subject.
        headers = {"Cdc-Error": reason, "Cdc-Subject": intended_subject or NO_ROUTE_SUBJECT}
        if len(data) + _headers_size(headers, msg_id) > self.max_payload:
            data = b""  # the reason still gets through; the body is in the outbox table
        return Outbound(self._dead_letter_subject, data, headers, msg_id, DEAD_LETTER_ROUTE, reason)


def _compile_route(route: RouteConfig, database: str) -> _CompiledRoute:
    conditions = []
    for column, patterns in route.when:
        globs = [p for p in patterns if "*" in p or "?" in p]
        exact = frozenset(p for p in patterns if p not in globs)
        # fnmatch.translate gives an anchored, case-sensitive regex per pattern.
        glob = re.compile("|".join(fnmatch.translate(p) for p in globs)).match if globs else None
        conditions.append(_Condition(column, exact, glob, _path_or_none(column)))
    placeholders = {*route.subject_template.columns}
    for _, template in route.header_templates:
        placeholders.update(template.columns)
    paths = tuple(path for p in sorted(placeholders) if (path := _path_or_none(p)) is not None)
    return _CompiledRoute(
        name=route.name,
        conditions=tuple(conditions),
        subject=_compile_template(route.subject_template, subject=True, where="subject"),
        headers=tuple(
            (name, _compile_template(template, subject=False, where=f"header {name!r}"))
            for name, template in route.header_templates
        ),
        payload_column=None if route.payload in BUILT_PAYLOADS else route.payload,
        id_column=route.id,
        publishes_change=route.payload in CHANGE_PAYLOADS,
        debezium=route.payload == DEBEZIUM_PAYLOAD,
        id_given=route.id_given,
        paths=paths,
        when_reads_paths=any(condition.path is not None for condition in conditions),
        event_format=None if route.format == PLAIN_FORMAT else _event_format(route, database),
    )


def _path_or_none(placeholder: str) -> _Path | None:
    column, keys = split_path(placeholder)
    return _Path(placeholder, column, keys) if keys else None


def _path_value(
    path: _Path, row: Mapping[str, ColumnValue], documents: dict[str, object]
) -> object:
    """The text at ``path`` in this row (JSON strings as they are, numbers and booleans as
    JSON writes them); None for a JSON null, a _Composite for an object or an array, and
    _MISSING when the path leads nowhere (no such key, NULL or invalid JSON). Parses the
    column's JSON on the first read of this row, into ``documents``."""
    document = documents.get(path.column, _UNPARSED)
    if document is _UNPARSED:
        document = documents[path.column] = _parse_json(row.get(path.column))
    for key in path.keys:
        if not isinstance(document, dict):
            return _MISSING
        document = document.get(key, _MISSING)
    if isinstance(document, str) or document is None or document is _MISSING:
        return document
    if isinstance(document, bool):
        return "true" if document else "false"
    return _Composite("object" if isinstance(document, dict) else "array")


def _parse_json(value: object) -> object:
    if not isinstance(value, str):
        return _MISSING  # NULL, or bytea: no JSON to read
    try:
        return _JSON_TEXT_NUMBERS.decode(value)
    except (ValueError, RecursionError):
        return _MISSING


def _event_format(route: RouteConfig, database: str) -> EventFormat:
    settings = route.cloudevents

    def render(
        attribute: str, default: Template
    ) -> Callable[[str, Mapping[str, ColumnValue]], str]:
        template = settings.template(attribute) or default
        return _attribute_template(template, f"cloudevents.{attribute}").render

    # Fixed at start-up: the database's name is literal text, braces and all.
    source = Template((f"/cdc-bridge/{database}/", ""), (TABLE_PSEUDO_COLUMN,))
    subject = settings.template("subject")
    return EventFormat(
        structured=route.format == CLOUDEVENTS_STRUCTURED_FORMAT,
        source=render("source", source),
        type=render("type", Template(("", ""), ("event_type",))),
        change_type=render(
            "type", Template(("", ".", ""), (TABLE_PSEUDO_COLUMN, ACTION_PSEUDO_COLUMN))
        ),
        subject=None if subject is None else render("subject", subject),
        extensions=tuple(
            (name, _attribute_template(template, f"cloudevents.extensions.{name}").render)
            for name, template in settings.extension_templates
        ),
        content_type=settings.datacontenttype,
    )


def _attribute_template(template: Template, where: str) -> _CompiledTemplate:
    # Any text makes an attribute: percent-encoded in a header, escaped in JSON.
    return _CompiledTemplate(
        first=template.literals[0],
        rest=tuple(zip(template.columns, template.literals[1:], strict=True)),
        unsafe=_NOTHING_UNSAFE.search,
        where=where,
        rule="",
    )


def _without_attribute_headers(headers: dict[str, str]) -> dict[str, str]:
    """A CloudEvent's ce-* and content-type headers are its attributes: same-named
    entries of the row's headers column are left out (the config refuses them in a
    route's `headers`)."""
    return {
        name: value
        for name, value in headers.items()
        if not name.lower().startswith("ce-") and name.lower() != "content-type"
    }


def _draft(
    event_format: EventFormat,
    table: str,
    row: Mapping[str, ColumnValue],
    data: bytes | PendingEvent | None,
    msg_id: str,
    payload_column: str | None,
    change: bool = False,
) -> PendingEvent:
    try:
        return event_format.draft(table, row, data, msg_id, change=change, payload=payload_column)
    except InvalidEvent as invalid:
        raise _Rejected(f"not a valid CloudEvent: {invalid}") from None


def _compile_template(template: Template, *, subject: bool, where: str) -> _CompiledTemplate:
    return _CompiledTemplate(
        first=template.literals[0],
        rest=tuple(zip(template.columns, template.literals[1:], strict=True)),
        unsafe=(_UNSAFE_SUBJECT_VALUE if subject else _UNSAFE_HEADER_VALUE).search,
        where=where,
        rule=_SUBJECT_TOKEN_RULE if subject else _HEADER_VALUE_RULE,
    )


def _unusable(column: str, value: object, where: str) -> str:
    if "." in column:  # a JSON path
        if value is _MISSING:
            return f"no value at {{{column}}} for the {where}: the JSON has no such path"
        if value is None:
            return f"JSON null at {{{column}}} in {where}"
        kind = value.kind if isinstance(value, _Composite) else "value"
        return f"{{{column}}} in {where} is a JSON {kind}, not a single value"
    if value is _MISSING:
        return f"column {column!r} is not in the row (needed by the {where})"
    if value is None:
        return f"NULL value for {{{column}}} in {where}"
    return f"bytea value for {{{column}}} in {where}: only text fills a template"


def _shown_value(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "bytea"
    if isinstance(value, _Composite):
        return value.kind
    return _clip(str(value))


def _payload_data(column: str | None, row: Mapping[str, ColumnValue]) -> bytes:
    if column is None:
        return _row_json(row)
    value = row.get(column, _MISSING)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    if value is None:
        return b""  # a NULL payload is allowed: the event is in the subject and headers
    raise _Rejected(f"payload column {column!r} is not in the row")


def _safe_data(column: str, row: Mapping[str, ColumnValue]) -> bytes:
    try:
        return _payload_data(column, row)
    except _Rejected:
        return b""


def _row_json(row: Mapping[str, ColumnValue]) -> bytes:
    # Values are PostgreSQL's text form (a jsonb column arrives as a JSON string, not
    # a nested object). JSON has no bytes, so bytea values become base64 strings.
    document = {
        column: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for column, value in row.items()
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _id_text(column: str, row: Mapping[str, ColumnValue]) -> str:
    value = row.get(column, _MISSING)
    if value is _MISSING:
        raise _Rejected(f"id column {column!r} is not in the row")
    row_id = _id_or_none(value)
    if row_id is None:
        raise _Rejected(f"NULL id column {column!r}")
    return row_id


def _id_or_none(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return None


def _null_id(table: str, row: Mapping[str, ColumnValue]) -> str:
    """A deterministic id for a row without one, so replays of it deduplicate."""
    canonical = json.dumps(
        [table, sorted((k, v.hex() if isinstance(v, bytes) else v) for k, v in row.items())],
        separators=(",", ":"),
    )
    return "null-id:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _column_headers(column: str | None, row: Mapping[str, ColumnValue]) -> dict[str, str]:
    raw = row.get(column) if column is not None else None
    if raw is None:  # no headers column, or NULL in it
        return {}
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise _Rejected(f"invalid JSON in headers column {column!r}: {exc}") from None
    if not isinstance(parsed, dict):
        raise _Rejected(
            f"headers column {column!r} holds JSON {type(parsed).__name__}, not an object"
        )
    headers: dict[str, str] = {}
    for name, value in parsed.items():
        if not isinstance(value, str):
            continue  # only string entries are headers; numbers etc. are ignored
        if not HEADER_NAME.fullmatch(name):
            raise _Rejected(f"invalid header name in headers column: {_clip(name)}")
        if name.lower() == "nats-msg-id":
            continue  # the id column decides deduplication, not the row's headers
        if controls_jetstream(name):
            raise _Rejected(
                f"header {_clip(name)} in headers column {column!r} is reserved: "
                "Nats-* headers control JetStream"
            )
        if _UNSAFE_HEADER_VALUE.search(value):
            raise _Rejected(
                f"unsafe value for header {name!r} in headers column {column!r}: "
                f"{_clip(value)} ({_HEADER_VALUE_RULE})"
            )
        headers[name] = value
    return headers


def _headers_size(headers: Mapping[str, str], msg_id: str) -> int:
    size = _HEADER_BLOCK_OVERHEAD + _MSG_ID_HEADER + len(msg_id.encode())
    for name, value in headers.items():
        # ": " and "\r\n"; names are ASCII, values are measured in UTF-8 bytes.
        size += len(name) + (len(value) if value.isascii() else len(value.encode())) + 4
    return size


def _clip(value: str) -> str:
    if len(value) > _REASON_VALUE_LIMIT:
        value = value[: _REASON_VALUE_LIMIT - 3] + "..."
    return repr(value)
