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

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.config.schema import (
    DEBEZIUM_PAYLOAD,
)
from cdc_bridge.core.changes import NO_COLUMNS, ColumnValue, RowChange
from cdc_bridge.core.headers import BODY_DROPPED, DEAD_LETTER_ERROR, DEAD_LETTER_SUBJECT
from cdc_bridge.core.templates import (
    TABLE_PSEUDO_COLUMN,
)
from cdc_bridge.core.wire_text import (
    MAX_HEADER_BLOCK,
    id_problem,
    printable,
    sendable_id,
    subject_limit,
    subject_problem,
)
from cdc_bridge.routing.change_events import change_json, routing_row
from cdc_bridge.routing.cloudevents import EventFormat, InvalidEvent, PendingEvent
from cdc_bridge.routing.debezium import debezium_event
from cdc_bridge.routing.row_values import (
    column_headers,
    headers_size,
    id_or_none,
    id_text,
    null_id,
    payload_data,
    safe_data,
)
from cdc_bridge.routing.rules import (
    CompiledRoute,
    Rejected,
    compile_route,
    path_value,
)

DEAD_LETTER_ROUTE = "dead_letter"


# Cdc-Subject of a dead letter no route was applied to (no route matched, or a logical
# message that is not an envelope).
NO_ROUTE_SUBJECT = "(no route)"


_REASON_LIMIT = 500


# What the pipeline's own headers (Cdc-Lsn, Cdc-Table...) usually take: a dead letter
# keeps its body only with this much room to spare (the publisher drops it if the
# finished frame is too large all the same).
_BRIDGE_HEADERS_ROOM = 512


# A dead letter's Cdc-Subject keeps this much of a subject that was too long to send.
_INTENDED_SUBJECT_LIMIT = 1024


# Not frozen, __init__ written out: one per event (see core/changes.py).
@dataclass(slots=True, init=False)
class Outbound:
    """One message to publish; the publisher adds ``Nats-Msg-Id: msg_id`` itself."""

    subject: str
    data: bytes
    headers: dict[str, str]  # column headers, then route headers over them
    msg_id: str  # Nats-Msg-Id
    route: str  # route name, or "dead_letter"
    dead_letter_reason: str | None  # set when this is a dead-letter message
    # A CloudEvent or Debezium envelope: the pipeline finishes it (data, more headers).
    event: PendingEvent | None

    def __init__(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        msg_id: str,
        route: str,
        dead_letter_reason: str | None = None,
        event: PendingEvent | None = None,
    ) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.msg_id = msg_id
        self.route = route
        self.dead_letter_reason = dead_letter_reason
        self.event = event


@dataclass(frozen=True, slots=True)
class Poison:
    """A row that cannot be published and has nowhere else to go (no dead_letter)."""

    row_id: str | None
    reason: str


class Router:
    """Compiled routing rules: ``route(table, row)`` for each outbox insert."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        max_payload: int = 1024 * 1024,
        on_reserved_header: Callable[[str], None] | None = None,
    ) -> None:
        self.max_payload = max_payload  # the server's value replaces this at connect time
        self.max_subject = subject_limit()  # bytes of subject an HPUB line can carry
        # Told the name of each of the bridge's own headers a row's headers column set
        # (they are left out).
        self._on_reserved_header = on_reserved_header
        self._database = config.postgres.database
        self._routes = tuple(compile_route(route, self._database) for route in config.routes)
        self._default_id_column = config.outbox.id_column
        self._default_payload_column = config.outbox.payload_column
        self._headers_column = config.outbox.headers_column
        self._dead_letter_subject = (
            config.dead_letter.subject if config.dead_letter is not None else None
        )
        self.route_names = tuple(route.name for route in self._routes)
        self._reads_paths = any(r.paths or r.when_reads_paths for r in self._routes)

    def route(
        self,
        table: str,
        row: Mapping[str, ColumnValue],
        json_columns: frozenset[str] = NO_COLUMNS,
    ) -> Outbound | Poison:
        """The message for this row, its dead letter, or Poison (no dead_letter).
        ``json_columns``: the row's json and jsonb columns (Insert.json_columns)."""
        values = row  # what templates read: the row, plus its JSON paths' values
        if self._reads_paths:
            compiled, values = self._match_with_paths(table, row)
        else:
            compiled = self._match(table, row)
        if compiled is None:
            data = safe_data(self._default_payload_column, row)
            return self._reject(table, row, self._default_id_column, "no route matches", data)
        if compiled.publishes_change:
            data = safe_data(self._default_payload_column, row)
            payload = DEBEZIUM_PAYLOAD if compiled.debezium else "change"
            reason = (
                f"route {compiled.name!r} publishes change events (payload: {payload}), and "
                f"{table} is not in outbox.change_tables"
            )
            intended = compiled.subject.shown(table, values)
            return self._reject(table, row, compiled.id_column, reason, data, intended)
        if compiled.event_format is not None:
            return self._route_event(
                compiled, compiled.event_format, table, row, values, json_columns
            )
        data = b""
        subject: str | None = None
        try:
            data = payload_data(compiled.payload_column, row)
            msg_id = id_text(compiled.id_column, row)
            subject = compiled.subject.render(table, values)
            headers = self._headers(compiled, table, row, values)
        except Rejected as rejected:
            if subject is None:
                subject = compiled.subject.shown(table, values)
            return self._reject(table, row, compiled.id_column, rejected.reason, data, subject)
        # id_text checked the id: what is left is the subject's length and the sizes.
        header_size = headers_size(headers, msg_id)
        problem = self._too_large(subject, len(data) + header_size, header_size)
        if problem is not None:
            return self._reject(table, row, compiled.id_column, problem, b"", subject)
        return Outbound(subject, data, headers, msg_id, compiled.name)

    def _route_event(
        self,
        compiled: CompiledRoute,
        event_format: EventFormat,
        table: str,
        row: Mapping[str, ColumnValue],
        values: Mapping[str, ColumnValue],
        json_columns: frozenset[str],
    ) -> Outbound | Poison:
        """``route`` for a route with a CloudEvents format: apart, so that plain routes
        pay one test for it. ``values`` is what templates read (the row and its paths)."""
        data = b""
        subject: str | None = None
        column = compiled.payload_column
        try:
            data = payload_data(column, row)
            msg_id = id_text(compiled.id_column, row)
            subject = compiled.subject.render(table, values)
            headers = _without_attribute_headers(self._headers(compiled, table, row, values))
            given = None if column is not None and row.get(column) is None else data
            known_json = column is not None and column in json_columns
            event = _draft(event_format, table, row, given, msg_id, column, known_json=known_json)
        except Rejected as rejected:
            if subject is None:
                subject = compiled.subject.shown(table, values)
            return self._reject(table, row, compiled.id_column, rejected.reason, data, subject)
        size = len(data) + headers_size(headers, msg_id) + event.size_bound()
        problem = self._unsendable(subject, size, headers, msg_id)
        if problem is not None:
            return self._reject(table, row, compiled.id_column, problem, b"", subject)
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
                data = payload_data(compiled.payload_column, row)
            if compiled.id_given:
                msg_id = id_text(compiled.id_column, row)
            subject = compiled.subject.render(table, values)
            headers = {name: t.render(table, values) for name, t in compiled.headers}
            if compiled.event_format is not None:
                column = compiled.payload_column
                given: bytes | PendingEvent | None = event or data
                if column is not None and row.get(column) is None:
                    given = None
                event = _draft(compiled.event_format, table, row, given, msg_id, column, True)
        except Rejected as rejected:
            if subject is None:
                subject = compiled.subject.shown(table, values)
            if compiled.debezium and not data:
                data = change_json(change)  # the change itself, as payload: change has it
            return self._reject_change(msg_id, rejected.reason, data, subject)
        size = len(data) + headers_size(headers, msg_id)
        if event is not None:
            size += event.size_bound()
        problem = self._unsendable(subject, size, headers, msg_id)
        if problem is not None:
            return self._reject_change(msg_id, problem, b"", subject)
        return Outbound(subject, data, headers, msg_id, compiled.name, None, event)

    def _unsendable(
        self, subject: str, size: int, headers: Mapping[str, str], msg_id: str
    ) -> str | None:
        """Why a routed message can never be stored, or None: the router's one check of
        what it made against the wire's rules (core/wire_text.py) and the server's
        limits. Header values and subject tokens were checked as they were rendered; the
        publisher checks the finished frame (with the bridge's own headers) once more."""
        return id_problem(msg_id) or self._too_large(subject, size, headers_size(headers, msg_id))

    def _too_large(self, subject: str, size: int, header_size: int) -> str | None:
        """``_unsendable`` without the id's check: the subject's length, the message's
        size (headers included) and the headers' size (``header_size``)."""
        problem = subject_problem(subject, self.max_subject)
        if problem is not None:
            return problem
        if size > self.max_payload:
            return f"payload of {size} bytes exceeds the server's max_payload {self.max_payload}"
        if header_size > MAX_HEADER_BLOCK:
            return f"headers of {header_size} bytes exceed the server's {MAX_HEADER_BLOCK}"
        return None

    def _reject_change(
        self, msg_id: str, reason: str, data: bytes, subject: str | None = None
    ) -> Outbound | Poison:
        if self._dead_letter_subject is None:
            return Poison(printable(msg_id), reason)
        return self._dead_letter_message(reason, msg_id, data, subject)

    def dead_letter(self, original: Outbound, reason: str, row_id: str) -> Outbound | Poison:
        """Redirect a message the server refused for good (e.g. no stream for its subject)."""
        if self._dead_letter_subject is None or original.route == DEAD_LETTER_ROUTE:
            # A dead letter that cannot be published has nowhere further to go.
            return Poison(printable(row_id), reason)
        return self._dead_letter_message(reason, row_id, original.data, original.subject)

    def _match(self, table: str, row: Mapping[str, ColumnValue]) -> CompiledRoute | None:
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
    ) -> tuple[CompiledRoute | None, Mapping[str, ColumnValue]]:
        """``_match`` for configs that read JSON paths; with the matched route, the row
        plus the values of the paths its templates read (keyed by the path's text)."""
        documents: dict[str, object] = {}  # column -> its parsed JSON, for this row only
        for compiled in self._routes:
            for condition in compiled.conditions:
                if condition.path is not None:
                    value = path_value(condition.path, row, documents)
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
                    values[path.text] = path_value(path, row, documents)
                # Path values are text, None or markers the templates turn into reasons.
                return compiled, typing.cast(Mapping[str, ColumnValue], values)
        return None, row

    def _headers(
        self,
        compiled: CompiledRoute,
        table: str,
        row: Mapping[str, ColumnValue],
        values: Mapping[str, ColumnValue],
    ) -> dict[str, str]:
        headers = column_headers(self._headers_column, row, self._on_reserved_header)
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
        row_id = id_or_none(row.get(id_column))
        if self._dead_letter_subject is None:
            return Poison(None if row_id is None else printable(row_id), reason)
        msg_id = row_id if row_id is not None else null_id(table, row)
        return self._dead_letter_message(reason, msg_id, data, subject)

    def _dead_letter_message(
        self, reason: str, msg_id: str, data: bytes, intended_subject: str | None
    ) -> Outbound:
        assert self._dead_letter_subject is not None
        # A dead letter must always be sendable: its id (the row's may be why it is
        # here), its headers and its size are made to fit.
        msg_id = sendable_id(msg_id)
        # The reason travels in a header: one line, bounded length.
        reason = printable(reason.replace("\r", " ").replace("\n", " "))[:_REASON_LIMIT]
        # Every dead letter names where it was meant to go, so consumers need no special
        # case; a value with a space can never be taken for a real subject.
        intended = printable(intended_subject or NO_ROUTE_SUBJECT)
        if len(intended) > _INTENDED_SUBJECT_LIMIT:
            intended = intended[: _INTENDED_SUBJECT_LIMIT - 3] + "..."
        headers = {DEAD_LETTER_ERROR: reason, DEAD_LETTER_SUBJECT: intended}
        size = len(data) + headers_size(headers, msg_id) + _BRIDGE_HEADERS_ROOM
        if data and size > self.max_payload:
            # The reason still gets through; the body stays in the outbox table.
            headers[BODY_DROPPED] = f"{len(data)} bytes"
            data = b""
        return Outbound(self._dead_letter_subject, data, headers, msg_id, DEAD_LETTER_ROUTE, reason)


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
    *,
    known_json: bool = False,
) -> PendingEvent:
    try:
        return event_format.draft(
            table, row, data, msg_id, change=change, payload=payload_column, known_json=known_json
        )
    except InvalidEvent as invalid:
        raise Rejected(f"not a valid CloudEvent: {invalid}") from None
