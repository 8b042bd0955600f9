"""Configuration: YAML text -> env expansion -> validation -> frozen values.

Every problem in a config file becomes one line, ``config.yaml:12: routes[1].subject:
<message>``, and all problems are reported at once so a broken file is fixed in one
round. Secrets never appear in those lines: values under keys named like a DSN,
password or token are shown as ``<redacted>``, and any echoed URL loses its password.

``config/example.yaml`` documents every key.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias, TypeGuard

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from cdc_bridge.durations import parse_duration

# ---------------------------------------------------------------------------------------
# Public values
# ---------------------------------------------------------------------------------------

TABLE_PSEUDO_COLUMN = "table"  # in `when` and templates: the row's "schema.table"
ROW_PAYLOAD = "row"  # `payload: row` publishes the whole row as a JSON object


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = field(repr=False)  # may hold a password: use redact_dsn() to show it
    slot: str
    publication: str
    plugin: str  # "pgoutput" | "wal2json"
    status_interval: float  # seconds
    connect_timeout: float


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """The stream the bridge creates when it is missing (an existing one is left as is)."""

    name: str
    subjects: tuple[str, ...]
    duplicate_window: float  # seconds
    storage: str  # "file" | "memory"
    replicas: int
    max_age: float  # seconds; 0 = unlimited


@dataclass(frozen=True, slots=True)
class NatsConfig:
    servers: tuple[str, ...]
    stream: StreamConfig
    ack_timeout: float
    max_in_flight: int
    connect_timeout: float


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    tables: tuple[str, ...]  # "schema.table"
    id_column: str
    payload_column: str
    headers_column: str | None  # None: rows carry no headers


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    when: tuple[tuple[str, tuple[str, ...]], ...]  # (column, alternatives); empty = every row
    subject: str  # template
    headers: tuple[tuple[str, str], ...]  # (header name, template)
    payload: str  # a column, or ROW_PAYLOAD; outbox.payload_column when not given
    id: str  # column for Nats-Msg-Id; outbox.id_column when not given


@dataclass(frozen=True, slots=True)
class DeadLetterConfig:
    subject: str


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str  # "json" | "console"
    level: str  # "debug" | "info" | "warning" | "error"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str | None  # "host:port"; None = no HTTP server

    @property
    def host(self) -> str | None:
        return None if self.listen is None else self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int | None:
        return None if self.listen is None else int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    postgres: PostgresConfig
    nats: NatsConfig
    outbox: OutboxConfig
    routes: tuple[RouteConfig, ...]
    dead_letter: DeadLetterConfig | None  # None: a poison row stops the bridge
    logging: LoggingConfig
    shutdown_timeout: float
    http: HttpConfig

    def template_columns(self) -> set[str]:
        """Every real column the routes read, for checking against the live tables."""
        columns: set[str] = set()
        for route in self.routes:
            columns.update(column for column, _ in route.when)
            columns.update(parse_template(route.subject).columns)
            for _, template in route.headers:
                columns.update(parse_template(template).columns)
            if route.payload != ROW_PAYLOAD:
                columns.add(route.payload)
            columns.add(route.id)
        columns.discard(TABLE_PSEUDO_COLUMN)
        return columns


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------

_URL_USERINFO = re.compile(r"(://[^:/?#@\s]*:)[^/?#\s]*@")
_NATS_TOKEN = re.compile(r"(\b(?:nats|tls|wss?)://)[^:/?#@\s]+@", re.IGNORECASE)
_URL_PASSWORD_PARAM = re.compile(r"([?&](?:ssl)?password=)[^&#\s]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(
    r"(\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s']\S*)", re.IGNORECASE
)
_SENSITIVE_KEY = re.compile(r"password|passwd|secret|token|dsn|credential", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """Replace the password in URL (``postgresql://u:pw@h``, ``?password=``) and
    keyword (``password=pw``, ``password='p w'``) DSNs with ``***``.

    Also fit for NATS server URLs, where a lone ``nats://token@host`` is a secret too.
    """
    # The userinfo pattern is greedy up to the last "@" before the host, because
    # people do write unescaped "@" in passwords.
    if "://" in dsn:
        redacted = _NATS_TOKEN.sub(r"\1***@", dsn)
        redacted = _URL_USERINFO.sub(r"\1***@", redacted)
        return _URL_PASSWORD_PARAM.sub(r"\1***", redacted)
    return _KEYWORD_PASSWORD.sub(r"\1***", dsn)


# ---------------------------------------------------------------------------------------
# Templates and subjects (shared with cdc_bridge.routing)
# ---------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEMPLATE_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SUBJECT_FORBIDDEN = re.compile(r"[*>\s\x00-\x1f\x7f]")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII except ':'


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed ``{column}`` template.

    ``literals`` has one more item than ``columns``; the rendered text is
    ``literals[0] + value(columns[0]) + literals[1] + ... + literals[-1]``.
    ``{{`` and ``}}`` stand for literal braces.
    """

    literals: tuple[str, ...]
    columns: tuple[str, ...]


def parse_template(text: str) -> Template:
    """Split a template into literal text and column names; ValueError if malformed."""
    literals: list[str] = []
    columns: list[str] = []
    current: list[str] = []
    position = 0
    for piece in _TEMPLATE_PIECE.finditer(text):
        current.append(text[position : piece.start()])
        position = piece.end()
        token = piece.group(0)
        if token in ("{{", "}}"):
            current.append(token[0])
        elif piece.group(1) is None:
            raise ValueError(f"unmatched {token!r}: write {token * 2} for a literal brace")
        elif not _IDENTIFIER.fullmatch(piece.group(1)):
            raise ValueError(f"placeholder {token!r} must name a column, like {{event_type}}")
        else:
            literals.append("".join(current))
            current = []
            columns.append(piece.group(1))
    current.append(text[position:])
    literals.append("".join(current))
    return Template(tuple(literals), tuple(columns))


def check_subject_template(text: str) -> Template:
    """A template whose every rendering (one safe token per placeholder) is a concrete
    NATS subject. ValueError says what is wrong."""
    template = parse_template(text)
    if TABLE_PSEUDO_COLUMN in template.columns:
        raise ValueError("{table} always contains a '.', so it cannot fill one subject token")
    # Placeholder values are single tokens (checked per row), so the literal text
    # alone decides the token structure; "x" stands in for any value.
    _check_concrete_subject("x".join(template.literals), shown=text)
    return template


def _check_concrete_subject(subject: str, shown: str | None = None) -> None:
    if not subject:
        raise ValueError("a subject must not be empty")
    forbidden = _SUBJECT_FORBIDDEN.search(subject)
    if forbidden is not None:
        char = forbidden.group(0)
        if char in "*>":
            raise ValueError(
                f"published subjects are concrete: the wildcard {char!r} is not allowed"
            )
        raise ValueError(f"a subject may not contain whitespace or control characters ({char!r})")
    if "" in subject.split("."):
        shown = subject if shown is None else shown
        raise ValueError(f"{shown!r} has an empty token (a dot at an end or two in a row)")


def _check_subject_filter(subject: str) -> str:
    """Stream subjects may use wildcards: ``*`` as a whole token, ``>`` as the last one."""
    tokens = subject.split(".")
    if not subject or "" in tokens:
        raise ValueError(f"{subject!r} has an empty token (a dot at an end or two in a row)")
    for index, token in enumerate(tokens):
        if re.search(r"[\s\x00-\x1f\x7f]", token):
            raise ValueError("a subject may not contain whitespace or control characters")
        if token == ">" and index != len(tokens) - 1:
            raise ValueError(f"'>' must be the last token in {subject!r}")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise ValueError(f"wildcards must be whole tokens in {subject!r}")
    return subject


# ---------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------

KeyPath: TypeAlias = tuple[str | int, ...]


class _Problems:
    """Problems collected along the pipeline, each tied to a key path where possible."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.entries: list[tuple[int | None, str]] = []

    def add(self, path: KeyPath, message: str, line: int | None = None) -> None:
        if line is None:
            line = self.line_of(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        text = f"{where}: {format_key_path(path)}: {message}" if path else f"{where}: {message}"
        self.entries.append((line, text))

    def line_of(self, path: KeyPath) -> int | None:
        # A missing key has no line of its own: point at its nearest present parent.
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def raise_if_any(self) -> None:
        if self.entries:
            ordered = sorted(self.entries, key=lambda entry: entry[0] or 0)
            raise ConfigError([text for _, text in ordered])


def format_key_path(path: KeyPath) -> str:
    """``("routes", 1, "subject")`` -> ``routes[1].subject``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _read_yaml(text: str, problems: _Problems) -> object:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _build_value(loader, node, (), problems, set())
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its position: the exception's own text quotes the
        # source line, which may be a DSN with a password.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problems.add((), f"invalid YAML: {exc.problem or exc.context}", line)
    except yaml.YAMLError as exc:
        problems.add((), f"invalid YAML: {type(exc).__name__}")
    finally:
        loader.dispose()
    return None


def _build_value(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: KeyPath,
    problems: _Problems,
    active: set[int],
) -> object:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node)
    if id(node) in active:
        problems.add(path, "a YAML alias refers to itself")
        return None
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items: list[object] = []
            for index, child in enumerate(node.value):
                problems.lines[(*path, index)] = child.start_mark.line + 1
                items.append(_build_value(loader, child, (*path, index), problems, active))
            return items
        assert isinstance(node, yaml.MappingNode)
        _check_duplicate_keys(node, path, problems)
        # Resolves `<<: *anchor` merge keys; merged pairs come first, so keys written
        # out in this mapping override them (last one wins below).
        loader.flatten_mapping(node)
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.add(path, "keys must be plain text", key_node.start_mark.line + 1)
                continue
            # The key's source text, not its YAML type: `on:` stays "on", not True.
            key = str(key_node.value)
            problems.lines[(*path, key)] = key_node.start_mark.line + 1
            mapping[key] = _build_value(loader, value_node, (*path, key), problems, active)
        return mapping
    finally:
        active.discard(id(node))


def _check_duplicate_keys(node: yaml.MappingNode, path: KeyPath, problems: _Problems) -> None:
    first_lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        line = key_node.start_mark.line + 1
        first = first_lines.setdefault(str(key_node.value), line)
        if first != line:
            key_path = (*path, str(key_node.value))
            problems.add(key_path, f"duplicate key (first on line {first})", line)


_MERGE_TAG = "tag:yaml.org,2002:merge"


# ---------------------------------------------------------------------------------------
# ${VAR} and ${VAR:-default}
# ---------------------------------------------------------------------------------------

_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


def _expand_env(
    value: object, path: KeyPath, env: Mapping[str, str], problems: _Problems, failed: set[KeyPath]
) -> object:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*path, k), env, problems, failed) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*path, i), env, problems, failed) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(reference: re.Match[str]) -> str:
        name, default = reference.group(1), reference.group(2)
        if reference.group(0) == "$${":  # escaped: a literal "${"
            return "${"
        if name is None:
            problems.add(path, "malformed ${...}: expected ${NAME} or ${NAME:-default}")
            failed.add(path)
            return ""
        current = env.get(name)
        if current:
            return current
        if default is not None:  # like the shell's ":-": empty counts as unset
            return default
        if current == "":
            return ""
        problems.add(
            path,
            f"environment variable {name} is not set "
            f"(write ${{{name}:-default}} to give a default)",
        )
        failed.add(path)
        return ""

    return _ENV_REFERENCE.sub(substitute, value)


# ---------------------------------------------------------------------------------------
# Schema: mirrors the YAML exactly (the field names are the keys)
# ---------------------------------------------------------------------------------------


def _duration(value: object) -> float:
    return parse_duration(value)  # DurationError is a ValueError: pydantic reports it


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str | int | float) else value


def _patterns(value: object) -> object:
    items = value if isinstance(value, list) else [value]
    out: list[object] = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(
                "true/false never equal a column's text (PostgreSQL prints booleans as "
                "t and f); quote the value"
            )
        out.append(str(item) if isinstance(item, int | float) else item)
    return out


def _server_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]  # "nats://a:4222,nats://b:4222"
    return value


def _matching(pattern: str, message: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message.format(value=_shown(value)))
        return value

    return check


def _table_name(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", p) for p in parts):
        raise ValueError(f"expected a table name like public.outbox, got {_shown(value)}")
    return value if len(parts) == 2 else f"public.{value}"


def _unique_tables(tables: tuple[str, ...]) -> tuple[str, ...]:
    duplicates = sorted({t for t in tables if tables.count(t) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} listed more than once")
    return tables


def _subject_template(value: str) -> str:
    check_subject_template(value)
    return value


def _header_template(value: str) -> str:
    template = parse_template(value)
    if any("\r" in lit or "\n" in lit for lit in template.literals):
        raise ValueError("a header value may not contain CR or LF")
    return value


def _concrete_subject(value: str) -> str:
    if "{" in value or "}" in value:
        raise ValueError("must be a fixed subject; placeholders are not allowed here")
    _check_concrete_subject(value)
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"invalid header name {_shown(value)} (printable ASCII, no ':' or spaces)")
    if value.lower() == "nats-msg-id":
        raise ValueError(
            "the message id comes from the route's `id` column; do not set Nats-Msg-Id"
        )
    return value


def _non_empty_when(when: dict[str, tuple[str, ...]] | None) -> dict[str, tuple[str, ...]] | None:
    if when is not None and not when:
        raise ValueError(
            "is empty: list columns to compare, or leave `when` out to match every row"
        )
    return when


def _payload_column(value: str) -> str:
    if value == TABLE_PSEUDO_COLUMN:
        raise ValueError("`table` is not a column; use a column name or `row`")
    return value if value == ROW_PAYLOAD else _column(value)


def _id_column(value: str) -> str:
    if value == TABLE_PSEUDO_COLUMN:
        raise ValueError("`table` is not a column; name the column that holds the row's id")
    return _column(value)


def _log_level(value: object) -> object:
    if isinstance(value, str):
        lowered = value.strip().lower()
        return "warning" if lowered == "warn" else lowered
    return value


def _disabled_listen(value: object) -> object:
    return None if value is False or value == "" or value == "false" else value


def _disabled_http(value: object) -> object:
    return {"listen": None} if value is None or value is False else value


def _none_is_empty(value: object) -> object:
    return {} if value is None else value  # `logging:` with nothing under it: all defaults


def _listen_address(value: str) -> str:
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535 or " " in host:
        raise ValueError(f"expected host:port like 127.0.0.1:8080, got {_shown(value)}")
    return value


_column = _matching(r"[A-Za-z_][A-Za-z0-9_]*", "expected a column name, got {value}")

Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Column = Annotated[str, AfterValidator(_column)]
NonEmpty = Annotated[str, Field(min_length=1)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderTemplate = Annotated[str, AfterValidator(_header_template)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PostgresSection(_Section):
    dsn: NonEmpty
    slot: Annotated[
        str,
        AfterValidator(
            _matching(
                r"[a-z0-9_]{1,63}",
                "expected a slot name of up to 63 characters a-z, 0-9 and _, got {value}",
            )
        ),
    ] = "cdc_bridge"
    publication: Annotated[
        str,
        AfterValidator(
            _matching(
                r"[a-z_][a-z0-9_]{0,62}",
                "expected a publication name of up "
                "to 63 characters a-z, 0-9 and _ (not starting with a digit), "
                "got {value}",
            )
        ),
    ] = "cdc_bridge"
    plugin: Literal["pgoutput", "wal2json"] = "pgoutput"
    status_interval: PositiveDuration = 10.0
    connect_timeout: PositiveDuration = 10.0


class _StreamSection(_Section):
    name: Annotated[
        str,
        AfterValidator(
            _matching(
                r"[^\s.*>/\\\x00-\x1f\x7f]{1,255}",
                "expected a stream name without spaces, '.', '*', '>', '/' or '\\', got {value}",
            )
        ),
    ]
    subjects: Annotated[
        tuple[Annotated[str, AfterValidator(_check_subject_filter)], ...],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
    ]
    duplicate_window: Duration = 120.0
    storage: Literal["file", "memory"] = "file"
    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    max_age: Duration = 0.0


class _NatsSection(_Section):
    servers: Annotated[tuple[NonEmpty, ...], BeforeValidator(_server_list), Field(min_length=1)]
    stream: _StreamSection
    ack_timeout: PositiveDuration = 5.0
    max_in_flight: Annotated[int, Field(ge=1)] = 4096
    connect_timeout: PositiveDuration = 5.0


class _OutboxSection(_Section):
    table: Annotated[
        tuple[Annotated[str, AfterValidator(_table_name)], ...],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
        AfterValidator(_unique_tables),
    ] = ("public.outbox",)
    id_column: Column = "id"
    payload_column: Column = "payload"
    headers_column: Column | None = "headers"


class _RouteSection(_Section):
    name: NonEmpty | None = None
    when: Annotated[
        dict[Column, Annotated[tuple[str, ...], BeforeValidator(_patterns), Field(min_length=1)]]
        | None,
        AfterValidator(_non_empty_when),
    ] = None
    subject: Annotated[str, AfterValidator(_subject_template)]
    headers: dict[HeaderName, HeaderTemplate] = Field(default_factory=dict)
    payload: Annotated[str, AfterValidator(_payload_column)] | None = None
    id: Annotated[str, AfterValidator(_id_column)] | None = None


class _DeadLetterSection(_Section):
    subject: Annotated[str, AfterValidator(_concrete_subject)]


class _LoggingSection(_Section):
    format: Literal["json", "console"] = "json"
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_log_level)] = (
        "info"
    )


class _HttpSection(_Section):
    listen: Annotated[
        Annotated[str, AfterValidator(_listen_address)] | None, BeforeValidator(_disabled_listen)
    ] = None


class _ConfigFile(_Section):
    postgres: _PostgresSection
    nats: _NatsSection
    outbox: Annotated[_OutboxSection, BeforeValidator(_none_is_empty)] = Field(
        default_factory=_OutboxSection
    )
    routes: Annotated[tuple[_RouteSection, ...], Field(min_length=1)]
    dead_letter: _DeadLetterSection | None = None
    logging: Annotated[_LoggingSection, BeforeValidator(_none_is_empty)] = Field(
        default_factory=_LoggingSection
    )
    shutdown_timeout: Duration = 10.0
    http: Annotated[_HttpSection, BeforeValidator(_disabled_http)] = Field(
        default_factory=_HttpSection
    )


# ---------------------------------------------------------------------------------------
# Pydantic errors -> one plain line each
# ---------------------------------------------------------------------------------------


def _shown(value: object) -> str:
    """A short, password-free rendering of a value for an error line."""
    if isinstance(value, str):
        clipped = redact_dsn(value)
        return repr(clipped if len(clipped) <= 60 else clipped[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "text"
    return _shown(value) if value is None or isinstance(value, dict | list | tuple) else "a value"


_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
}


def _allowed_keys(loc: KeyPath) -> list[str]:
    """The keys the schema accepts at ``loc`` (a mapping's path), for suggestions."""
    annotation: object = _ConfigFile
    for part in loc:
        annotation = _strip(annotation)
        if _is_section(annotation) and isinstance(part, str):
            info = annotation.model_fields.get(part)
            annotation = info.annotation if info is not None else None
        elif typing.get_origin(annotation) in (tuple, list) and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        else:
            return []
    annotation = _strip(annotation)
    return list(annotation.model_fields) if _is_section(annotation) else []


def _strip(annotation: object) -> object:
    """``Annotated[X | None, ...]`` -> ``X``."""
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation


def _is_section(annotation: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _message(error: ErrorDetails, loc: KeyPath) -> str:
    kind = error["type"]
    sensitive = any(isinstance(p, str) and _SENSITIVE_KEY.search(p) for p in loc)
    value = "<redacted>" if sensitive else _shown(error.get("input"))
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        unknown = str(loc[-1])
        close = difflib.get_close_matches(unknown, _allowed_keys(loc[:-1]), n=1, cutoff=0.6)
        return f"unknown key {unknown!r}" + (f"; did you mean {close[0]!r}?" if close else "")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        # The value may be a whole DSN written where a section belongs: name its kind only.
        return f"expected {_EXPECTED[kind]}, got {_kind(error.get('input'))}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the listed values')}, got {value}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "more than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }[kind]
        limit = next(iter(ctx.values()), "?")
        return f"must be {words} {limit}, got {value}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        text = str(ctx["error"])
        # Validators quote the value they reject; keep that out of secret keys.
        return "<redacted>: invalid value" if sensitive else text
    return f"{error['msg']} (got {value})"


def _add_validation_problems(
    exc: ValidationError, data: object, problems: _Problems, failed: set[KeyPath]
) -> None:
    errors = exc.errors()
    for error in errors:
        if error["type"] == "too_short" and _has_nested_error(error["loc"], errors):
            # pydantic counts only the valid items: a list whose one item is broken
            # would also be "empty". The item's own problem is the one to report.
            continue
        loc = _display_loc(tuple(p for p in error["loc"] if p != "[key]"), data)
        if any(loc[: len(f)] == f for f in failed):
            continue  # already reported: an unset environment variable
        problems.add(loc, _message(error, loc))


def _has_nested_error(loc: tuple[str | int, ...], errors: list[ErrorDetails]) -> bool:
    return any(len(e["loc"]) > len(loc) and e["loc"][: len(loc)] == loc for e in errors)


def _display_loc(loc: KeyPath, data: object) -> KeyPath:
    """Drop list indexes pydantic added where the YAML held a single value
    (``outbox.table: x`` is validated as a one-item list)."""
    shown: list[str | int] = []
    current = data
    for part in loc:
        if isinstance(part, int) and not isinstance(current, list):
            continue
        shown.append(part)
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
        else:
            current = None
    return tuple(shown)


# ---------------------------------------------------------------------------------------
# Whole-file checks and the public values
# ---------------------------------------------------------------------------------------


def _check_routes(routes: object, problems: _Problems) -> None:
    """Checks across routes. They read the raw data so that they are reported in the
    same round as the per-key problems; anything malformed there is skipped here."""
    if not isinstance(routes, list):
        return
    catch_all: int | None = None
    seen_names: dict[str, int] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        if catch_all is not None:
            problems.add(
                ("routes", index),
                f"can never match: routes[{catch_all}] has no `when` and catches every row",
            )
        elif route.get("when") is None:
            catch_all = index
        name = route.get("name") or f"routes[{index}]"
        if not isinstance(name, str):
            continue
        if name in seen_names:
            problems.add(
                ("routes", index, "name"),
                f"{name!r} is also the name of routes[{seen_names[name]}]",
            )
        seen_names.setdefault(name, index)


def _build(checked: _ConfigFile) -> BridgeConfig:
    pg, nats, outbox = checked.postgres, checked.nats, checked.outbox
    stream = nats.stream
    return BridgeConfig(
        postgres=PostgresConfig(
            dsn=pg.dsn,
            slot=pg.slot,
            publication=pg.publication,
            plugin=pg.plugin,
            status_interval=pg.status_interval,
            connect_timeout=pg.connect_timeout,
        ),
        nats=NatsConfig(
            servers=nats.servers,
            stream=StreamConfig(
                name=stream.name,
                subjects=stream.subjects,
                duplicate_window=stream.duplicate_window,
                storage=stream.storage,
                replicas=stream.replicas,
                max_age=stream.max_age,
            ),
            ack_timeout=nats.ack_timeout,
            max_in_flight=nats.max_in_flight,
            connect_timeout=nats.connect_timeout,
        ),
        outbox=OutboxConfig(
            tables=outbox.table,
            id_column=outbox.id_column,
            payload_column=outbox.payload_column,
            headers_column=outbox.headers_column,
        ),
        routes=tuple(
            RouteConfig(
                name=route.name or f"routes[{index}]",
                when=tuple((column, values) for column, values in (route.when or {}).items()),
                subject=route.subject,
                headers=tuple(route.headers.items()),
                payload=route.payload or outbox.payload_column,
                id=route.id or outbox.id_column,
            )
            for index, route in enumerate(checked.routes)
        ),
        dead_letter=(
            DeadLetterConfig(checked.dead_letter.subject) if checked.dead_letter else None
        ),
        logging=LoggingConfig(format=checked.logging.format, level=checked.logging.level),
        shutdown_timeout=checked.shutdown_timeout,
        http=HttpConfig(listen=checked.http.listen),
    )


def parse_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Validate config text; ConfigError lists every problem, one line each."""
    problems = _Problems(source)
    data = _read_yaml(text, problems)
    problems.raise_if_any()
    if not isinstance(data, dict):
        what = "the file is empty" if data is None else f"found {_shown(data)}"
        problems.add((), f"expected a mapping of sections (postgres:, nats:, routes: ...); {what}")
        problems.raise_if_any()
    failed: set[KeyPath] = set()
    environment = os.environ if env is None else env
    data = typing.cast(dict[str, object], _expand_env(data, (), environment, problems, failed))
    _check_routes(data.get("routes"), problems)
    try:
        checked = _ConfigFile.model_validate(data)
    except ValidationError as exc:
        _add_validation_problems(exc, data, problems, failed)
        problems.raise_if_any()
        raise AssertionError("validation failed without problems") from exc
    problems.raise_if_any()
    return _build(checked)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read and validate a config file (``env`` defaults to the process environment)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config file is not UTF-8 text ({exc.reason})"]) from exc
    return parse_config(text, source=str(path), env=env)
