"""The config file's schema: pydantic models that mirror the YAML exactly (the field
names are the keys), with the validators that turn loose YAML into checked values.

Private to cdc_bridge.config.model, which turns a validated ConfigFile into frozen dataclasses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from cdc_bridge.core.durations import parse_duration
from cdc_bridge.core.headers import BRIDGE_HEADERS, HEADER_NAME, controls_jetstream
from cdc_bridge.core.redaction import shown_value
from cdc_bridge.core.templates import (
    TABLE_PSEUDO_COLUMN,
    check_concrete_subject,
    check_subject_filter,
    check_subject_template,
    parse_template,
)

ROW_PAYLOAD = "row"  # `payload: row` publishes the whole row as a JSON object
CHANGE_PAYLOAD = "change"  # `payload: change` publishes a change table's wal2json-shaped change
# Headers every message gets from the bridge (lower case): a route may not set them.
_BRIDGE_HEADERS = frozenset(name.lower() for name in BRIDGE_HEADERS)


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
            raise ValueError(message.format(value=shown_value(value)))
        return value

    return check


def _auto_or_bool(value: object) -> object:
    # One field, one message: a plain `Literal["auto"] | bool` reports each alternative
    if value == "auto" or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"expected auto, true or false, got {shown_value(value)}")


def _table_name(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", p) for p in parts):
        raise ValueError(f"expected a table name like public.outbox, got {shown_value(value)}")
    return value if len(parts) == 2 else f"public.{value}"


def _unique_tables(tables: tuple[str, ...]) -> tuple[str, ...]:
    duplicates = sorted({t for t in tables if tables.count(t) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} listed more than once")
    return tables


def _unique_prefixes(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    duplicates = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} listed more than once")
    return prefixes


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
    check_concrete_subject(value)
    return value


def _header_name(value: str) -> str:
    if not HEADER_NAME.fullmatch(value):
        raise ValueError(
            f"invalid header name {shown_value(value)} (printable ASCII, no ':' or spaces)"
        )
    if value.lower() == "nats-msg-id":
        raise ValueError(
            "the message id comes from the route's `id` column; do not set Nats-Msg-Id"
        )
    if controls_jetstream(value):
        raise ValueError(
            f"{value} is reserved: Nats-* headers control JetStream, and the bridge sets "
            "the ones it needs"
        )
    if value.lower() in _BRIDGE_HEADERS:
        raise ValueError(f"{value} is set by the bridge itself")
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
    return value if value in (ROW_PAYLOAD, CHANGE_PAYLOAD) else _column(value)


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
        raise ValueError(f"expected host:port like 127.0.0.1:8080, got {shown_value(value)}")
    return value


_column = _matching(r"[A-Za-z_][A-Za-z0-9_]*", "expected a column name, got {value}")
_message_prefix = _matching(
    r"[A-Za-z0-9_.:/-]{1,100}",
    "expected a message prefix of up to 100 characters A-Z, a-z, 0-9, '_', '.', ':', '/' "
    "and '-', got {value}",
)

Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Column = Annotated[str, AfterValidator(_column)]
NonEmpty = Annotated[str, Field(min_length=1)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderTemplate = Annotated[str, AfterValidator(_header_template)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresSection(Section):
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
    # Create the slot as a failover slot (PostgreSQL 17+): auto = on where the server can
    failover: Annotated[Literal["auto", True, False], BeforeValidator(_auto_or_bool)] = "auto"
    # Where the slot lives: the primary, or a hot standby (16+; then primary_dsn is needed
    # for the publication and standby snapshots, which a standby cannot do)
    source: Literal["primary", "standby"] = "primary"
    primary_dsn: NonEmpty | None = None
    status_interval: PositiveDuration = 10.0
    connect_timeout: PositiveDuration = 10.0
    # Read at start-up and passed to libpq as its own `password` parameter, so the
    # secret is never part of a DSN string (see _config_secrets).
    password_file: NonEmpty | None = None


class StreamSection(Section):
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
        tuple[Annotated[str, AfterValidator(check_subject_filter)], ...],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
    ]
    duplicate_window: Duration = 120.0
    storage: Literal["file", "memory"] = "file"
    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    max_age: Duration = 0.0


class NatsTlsSection(Section):
    ca_file: NonEmpty | None = None  # None: the system's CAs verify the server
    cert_file: NonEmpty | None = None  # a client certificate, for servers that verify clients
    key_file: NonEmpty | None = None


class NatsSection(Section):
    servers: Annotated[tuple[NonEmpty, ...], BeforeValidator(_server_list), Field(min_length=1)]
    stream: StreamSection
    ack_timeout: PositiveDuration = 5.0
    max_in_flight: Annotated[int, Field(ge=1)] = 4096
    connect_timeout: PositiveDuration = 5.0
    tls: NatsTlsSection | None = None
    # One way to authenticate, at most; which combinations work is checked, and the
    # files read, in _config_secrets.
    user: NonEmpty | None = None
    password: NonEmpty | None = None
    password_file: NonEmpty | None = None
    token: NonEmpty | None = None
    token_file: NonEmpty | None = None
    nkey_seed_file: NonEmpty | None = None
    creds_file: NonEmpty | None = None


class OutboxSection(Section):
    # Before `table`: its check reads this one (pydantic validates in field order).
    # Characters are limited to what wal2json's add-msg-prefixes list takes unescaped.
    message_prefixes: Annotated[
        tuple[Annotated[str, AfterValidator(_message_prefix)], ...],
        BeforeValidator(_one_or_many),
        AfterValidator(_unique_prefixes),
    ] = ()
    # Ordinary tables whose inserts, updates and deletes become change events
    # (change_events.py). Before `table` too, for the same reason.
    change_tables: Annotated[
        tuple[Annotated[str, AfterValidator(_table_name)], ...],
        BeforeValidator(_one_or_many),
        AfterValidator(_unique_tables),
    ] = ()
    table: Annotated[
        tuple[Annotated[str, AfterValidator(_table_name)], ...],
        BeforeValidator(_one_or_many),
        AfterValidator(_unique_tables),
    ] = ("public.outbox",)
    id_column: Column = "id"
    payload_column: Column = "payload"
    headers_column: Column | None = "headers"

    @field_validator("table")
    @classmethod
    def _tables_or_messages(cls, tables: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        change_tables = info.data.get("change_tables") or ()
        if not tables and not info.data.get("message_prefixes") and not change_tables:
            raise ValueError(
                "must not be empty: list the outbox tables, or set outbox.message_prefixes "
                "for an outbox of logical decoding messages only (or outbox.change_tables "
                "for change events only)"
            )
        both = sorted(set(tables) & set(change_tables))
        if both:
            raise ValueError(
                f"{both[0]} is also in outbox.change_tables: a table is either an outbox "
                "table (its rows are events) or a change table (its changes are events)"
            )
        return tables


class RouteSection(Section):
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


class DeadLetterSection(Section):
    subject: Annotated[str, AfterValidator(_concrete_subject)]


class LoggingSection(Section):
    format: Literal["json", "console"] = "json"
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_log_level)] = (
        "info"
    )


class HttpSection(Section):
    listen: Annotated[
        Annotated[str, AfterValidator(_listen_address)] | None, BeforeValidator(_disabled_listen)
    ] = "127.0.0.1:8080"


class ConfigFile(Section):
    postgres: PostgresSection
    nats: NatsSection
    outbox: Annotated[OutboxSection, BeforeValidator(_none_is_empty)] = Field(
        default_factory=OutboxSection
    )
    routes: Annotated[tuple[RouteSection, ...], Field(min_length=1)]
    dead_letter: DeadLetterSection | None = None
    logging: Annotated[LoggingSection, BeforeValidator(_none_is_empty)] = Field(
        default_factory=LoggingSection
    )
    shutdown_timeout: Duration = 10.0
    stall_timeout: Duration = 60.0
    http: Annotated[HttpSection, BeforeValidator(_disabled_http)] = Field(
        default_factory=HttpSection
    )
