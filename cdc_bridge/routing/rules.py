"""The compiled routing rules: ``when`` conditions, ``{column}`` and ``{payload.path}``
templates with their safety checks, and a route's CloudEvents format, built once from the
config (router.py applies them to rows)."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cdc_bridge.config.model import RouteConfig
from cdc_bridge.config.schema import (
    BUILT_PAYLOADS,
    CHANGE_PAYLOADS,
    CLOUDEVENTS_STRUCTURED_FORMAT,
    DEBEZIUM_PAYLOAD,
    PLAIN_FORMAT,
)
from cdc_bridge.core.changes import ColumnValue
from cdc_bridge.core.templates import (
    ACTION_PSEUDO_COLUMN,
    TABLE_PSEUDO_COLUMN,
    Template,
    split_path,
)
from cdc_bridge.core.wire_text import SENDABLE_TEXT_RULE, UNENCODABLE_TEXT, UNSAFE_TEXT
from cdc_bridge.routing.cloudevents import EventFormat

# What one subject token may not be or contain (\A\Z: the empty string); NATS itself
# only rejects ASCII whitespace, refusing all of \s is stricter and costs nothing.
_UNSAFE_SUBJECT_VALUE = re.compile(r"\A\Z|[.*>\s\x00-\x1f\x7f\ud800-\udfff]")


UNSAFE_HEADER_VALUE = UNSAFE_TEXT  # the wire's rule (core/wire_text.py)


# CloudEvents attributes: any text that can be encoded (it is percent-encoded in a
# header, escaped in JSON).
_ATTRIBUTE_UNSAFE = UNENCODABLE_TEXT


# (Control characters and lone surrogates are refused too: too rare to lengthen it.)
_SUBJECT_TOKEN_RULE = "a subject token may not be empty or contain '.', '*', '>' or whitespace"


HEADER_VALUE_RULE = f"a header value may not hold {SENDABLE_TEXT_RULE}"


REASON_VALUE_LIMIT = 60


MISSING = object()


UNPARSED = object()  # a JSON column of this row no path has read yet


# One decoder for every row (json.loads with options builds one per call: twice the
# cost); numbers keep the text PostgreSQL wrote (1.50 is not turned into 1.5).
_JSON_TEXT_NUMBERS = json.JSONDecoder(parse_int=str, parse_float=str)


class Rejected(Exception):
    """Raised inside route(): the row goes to the dead letter subject for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Path:
    """A path into a JSON column: ``payload.customer.region``."""

    text: str  # as written, and the key its value is found under in a route's values
    column: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Composite:
    """A path's value that is a JSON object or array: no single text to use."""

    kind: str  # "object" or "array"


@dataclass(frozen=True, slots=True)
class Condition:
    column: str  # a column, or a path's text
    exact: frozenset[str]
    glob: Callable[[str], re.Match[str] | None] | None  # all glob patterns as one regex
    path: Path | None = None

    def matches(self, value: object) -> bool:
        # NULL and bytea never match: a pattern is text.
        if not isinstance(value, str):
            return False
        if value in self.exact:
            return True
        return self.glob is not None and self.glob(value) is not None


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
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
            value = table if column == TABLE_PSEUDO_COLUMN else row.get(column, MISSING)
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
            value = table if column == TABLE_PSEUDO_COLUMN else row.get(column, MISSING)
            if isinstance(value, str) and not self.unsafe(value):
                pieces.append(value)
            elif value is MISSING:
                pieces.append(f"{{{column}}}")
            else:
                pieces.append(f"{{{column}={shown_value(value)}}}")
            pieces.append(literal)
        return "".join(pieces)

    def _checked(self, column: str, value: object) -> str:
        if not isinstance(value, str):
            raise Rejected(unusable(column, value, self.where))
        if self.unsafe(value):
            raise Rejected(
                f"unsafe value for {{{column}}} in {self.where}: {clip(value)} ({self.rule})"
            )
        return value


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    conditions: tuple[Condition, ...]
    subject: CompiledTemplate
    headers: tuple[tuple[str, CompiledTemplate], ...]
    payload_column: str | None  # None: the whole row as JSON (or the change)
    id_column: str
    publishes_change: bool  # payload: change or debezium
    debezium: bool  # payload: debezium
    id_given: bool  # the route names its id column (change events use it only then)
    event_format: EventFormat | None  # None: format: plain
    paths: tuple[Path, ...] = ()  # the JSON paths its templates read
    when_reads_paths: bool = False


def compile_route(route: RouteConfig, database: str) -> CompiledRoute:
    conditions = []
    for column, patterns in route.when:
        globs = [p for p in patterns if "*" in p or "?" in p]
        exact = frozenset(p for p in patterns if p not in globs)
        # fnmatch.translate gives an anchored, case-sensitive regex per pattern.
        glob = re.compile("|".join(fnmatch.translate(p) for p in globs)).match if globs else None
        conditions.append(Condition(column, exact, glob, _path_or_none(column)))
    placeholders = {*route.subject_template.columns}
    for _, template in route.header_templates:
        placeholders.update(template.columns)
    paths = tuple(path for p in sorted(placeholders) if (path := _path_or_none(p)) is not None)
    return CompiledRoute(
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


def _path_or_none(placeholder: str) -> Path | None:
    column, keys = split_path(placeholder)
    return Path(placeholder, column, keys) if keys else None


def path_value(path: Path, row: Mapping[str, ColumnValue], documents: dict[str, object]) -> object:
    """The text at ``path`` in this row (JSON strings as they are, numbers and booleans as
    JSON writes them); None for a JSON null, a Composite for an object or an array, and
    MISSING when the path leads nowhere (no such key, NULL or invalid JSON). Parses the
    column's JSON on the first read of this row, into ``documents``."""
    document = documents.get(path.column, UNPARSED)
    if document is UNPARSED:
        document = documents[path.column] = _parse_json(row.get(path.column))
    for key in path.keys:
        if not isinstance(document, dict):
            return MISSING
        document = document.get(key, MISSING)
    if isinstance(document, str) or document is None or document is MISSING:
        return document
    if isinstance(document, bool):
        return "true" if document else "false"
    return Composite("object" if isinstance(document, dict) else "array")


def _parse_json(value: object) -> object:
    if not isinstance(value, str):
        return MISSING  # NULL, or bytea: no JSON to read
    try:
        return _JSON_TEXT_NUMBERS.decode(value)
    except (ValueError, RecursionError):
        return MISSING


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


def _attribute_template(template: Template, where: str) -> CompiledTemplate:
    # Any text makes an attribute: percent-encoded in a header, escaped in JSON.
    return CompiledTemplate(
        first=template.literals[0],
        rest=tuple(zip(template.columns, template.literals[1:], strict=True)),
        unsafe=_ATTRIBUTE_UNSAFE.search,
        where=where,
        rule="",
    )


def _compile_template(template: Template, *, subject: bool, where: str) -> CompiledTemplate:
    return CompiledTemplate(
        first=template.literals[0],
        rest=tuple(zip(template.columns, template.literals[1:], strict=True)),
        unsafe=(_UNSAFE_SUBJECT_VALUE if subject else UNSAFE_HEADER_VALUE).search,
        where=where,
        rule=_SUBJECT_TOKEN_RULE if subject else HEADER_VALUE_RULE,
    )


def unusable(column: str, value: object, where: str) -> str:
    if "." in column:  # a JSON path
        if value is MISSING:
            return f"no value at {{{column}}} for the {where}: the JSON has no such path"
        if value is None:
            return f"JSON null at {{{column}}} in {where}"
        kind = value.kind if isinstance(value, Composite) else "value"
        return f"{{{column}}} in {where} is a JSON {kind}, not a single value"
    if value is MISSING:
        return f"column {column!r} is not in the row (needed by the {where})"
    if value is None:
        return f"NULL value for {{{column}}} in {where}"
    return f"bytea value for {{{column}}} in {where}: only text fills a template"


def shown_value(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "bytea"
    if isinstance(value, Composite):
        return value.kind
    return clip(str(value))


_SAFE_VALUES_KEPT = 10_000  # per template


def clip(value: str) -> str:
    if len(value) > REASON_VALUE_LIMIT:
        value = value[: REASON_VALUE_LIMIT - 3] + "..."
    return repr(value)
