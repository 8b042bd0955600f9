"""The config file's schema, key by key: what each key accepts, and the one-line reason
when it does not (pydantic reports a validator's ValueError with the key's path).

config/model.py builds the sections from these types; the values come out checked and
in their final form (seconds as floats, lists as tuples, mappings as (key, value) pairs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, GetCoreSchemaHandler, WrapValidator
from pydantic_core import core_schema

from cdc_bridge.core.durations import parse_duration
from cdc_bridge.core.headers import BRIDGE_HEADERS, HEADER_NAME, TX_LAST_HEADER, controls_jetstream
from cdc_bridge.core.redaction import shown_value
from cdc_bridge.core.snapshots import SNAPSHOT_PREFIX
from cdc_bridge.core.templates import (
    TABLE_PSEUDO_COLUMN,
    check_concrete_subject,
    check_placeholder,
    check_subject_filter,
    check_subject_template,
    parse_template,
)
from cdc_bridge.core.wire_text import SENDABLE_TEXT_RULE, UNSAFE_TEXT

ROW_PAYLOAD = "row"  # `payload: row` publishes the whole row as a JSON object
CHANGE_PAYLOAD = "change"  # `payload: change` publishes a change table's wal2json-shaped change
DEBEZIUM_PAYLOAD = "debezium"  # `payload: debezium`: the change in Debezium's envelope
# The payloads that are a change of a change table, not a column of the row.
CHANGE_PAYLOADS = frozenset({CHANGE_PAYLOAD, DEBEZIUM_PAYLOAD})
BUILT_PAYLOADS = frozenset({ROW_PAYLOAD, *CHANGE_PAYLOADS})  # made by the bridge: JSON
# `format:` of a route (or outbox.format): today's messages, or CloudEvents in the binary
# or structured content mode of the CloudEvents NATS binding (routing/cloudevents.py).
PLAIN_FORMAT = "plain"
CLOUDEVENTS_FORMAT = "cloudevents"
CLOUDEVENTS_STRUCTURED_FORMAT = "cloudevents-structured"
# CloudEvents attributes the bridge sets; an extension may not reuse their names. The
# first ten are the spec's own (and the JSON format's data members); the last two carry
# the transaction position, like Cdc-Lsn and Cdc-Index.
CLOUDEVENTS_OWN_ATTRIBUTES = (
    "specversion", "id", "source", "type", "subject", "time", "datacontenttype",
    "dataschema", "data", "data_base64", "cdclsn", "cdcindex",
)  # fmt: skip
# Headers every message gets from the bridge (lower case): a route may not set them.
_BRIDGE_HEADERS = frozenset(name.lower() for name in (*BRIDGE_HEADERS, TX_LAST_HEADER))


class _Pairs:
    """Validates as ``mapping`` (so problems name the mapping's keys, as written) and
    holds its (key, value) pairs: in the file's order, and hashable like the rest."""

    def __init__(self, mapping: object) -> None:
        self.mapping = mapping

    def __get_pydantic_core_schema__(
        self, source: object, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            _items, handler.generate_schema(self.mapping)
        )


def _items(mapping: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return () if mapping is None else tuple(mapping.items())


def _none_as_empty(value: object, handler: Callable[[object], str]) -> str:
    """``key: null`` like a key left out: "" stands for "not given" (see RouteConfig)."""
    return "" if value is None else handler(value)


def _duration(value: object) -> float:
    return parse_duration(value)  # DurationError is a ValueError: pydantic reports it


def _one_or_many(value: object) -> object:
    if isinstance(value, str | int | float):
        return [value]
    if not isinstance(value, list | tuple):
        # Not pydantic's "expected a list": one value is accepted as well.
        raise ValueError(f"expected one value or a list of them, got {shown_value(value)}")
    return value


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
    if not isinstance(value, list | tuple):
        raise ValueError(
            "expected a list of server URLs, or one comma-separated string, got "
            + shown_value(value)
        )
    return value


def _matching(pattern: str, message: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message.format(value=shown_value(value)))
        return value

    return check


def _table_name(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", p) for p in parts):
        raise ValueError(f"expected a table name like public.outbox, got {shown_value(value)}")
    return value if len(parts) == 2 else f"public.{value}"


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} listed more than once")
    return items


def _subject_template(value: str) -> str:
    check_subject_template(value)
    return value


def _header_template(value: str) -> str:
    template = parse_template(value)
    if any(UNSAFE_TEXT.search(literal) for literal in template.literals):
        raise ValueError(f"a header value may not contain {SENDABLE_TEXT_RULE}")
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


def _path_booleans(when: object) -> object:
    """A JSON true/false under a path key compares as JSON's text: `true`, `false`.
    Column keys keep refusing booleans (PostgreSQL prints them as t and f)."""
    if not isinstance(when, dict):
        return when
    return {
        key: _json_booleans(value) if isinstance(key, str) and "." in key else value
        for key, value in when.items()
    }


def _json_booleans(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return [_json_booleans(item) for item in value]
    return value


def _extension_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{1,20}", value):
        raise ValueError(
            f"invalid CloudEvents extension name {shown_value(value)}: the spec allows "
            "lowercase letters a-z and digits 0-9 only, at most 20 characters"
        )
    if value in CLOUDEVENTS_OWN_ATTRIBUTES:
        raise ValueError(f"{value} is set by the bridge itself; name the extension otherwise")
    return value


def _attribute_template(value: str) -> str:
    parse_template(value)  # percent-encoded in headers, escaped in JSON: any text goes
    return value


def _media_type(value: str) -> str:
    if not re.fullmatch(r"[!#$&^_.+\-A-Za-z0-9]+/[!#$&^_.+\-A-Za-z0-9]+(?:\s*;.*)?", value):
        raise ValueError(f"expected a media type like application/json, got {shown_value(value)}")
    if UNSAFE_TEXT.search(value):
        raise ValueError(f"a media type may not contain {SENDABLE_TEXT_RULE}")
    return value


def _format_name(value: str) -> str:
    if value not in (PLAIN_FORMAT, CLOUDEVENTS_FORMAT, CLOUDEVENTS_STRUCTURED_FORMAT):
        raise ValueError(
            "expected 'plain', 'cloudevents' or 'cloudevents-structured', got " + shown_value(value)
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
    return value if value in BUILT_PAYLOADS else _column(value)


def _id_column(value: str) -> str:
    if value == TABLE_PSEUDO_COLUMN:
        raise ValueError("`table` is not a column; name the column that holds the row's id")
    return _column(value)


def _failover_setting(value: object) -> object:
    """postgres.failover: auto (None: a failover slot where the server can), true, false.
    One field, one message: a plain `Literal["auto"] | bool` reports each alternative."""
    if value == "auto":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"expected auto, true or false, got {shown_value(value)}")


def _atomic_setting(value: object) -> object:
    """nats.atomic_transactions: auto, true, false (YAML booleans, or their text from an
    expanded ${VAR}). One field, one message, as for postgres.failover."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
        lowered = value.strip().lower()
        return "auto" if lowered == "auto" else lowered == "true"
    raise ValueError(f"expected auto, true or false, got {shown_value(value)}")


def _log_level(value: object) -> object:
    if isinstance(value, str):
        lowered = value.strip().lower()
        return "warning" if lowered == "warn" else lowered
    return value


def _disabled_listen(value: object) -> object:
    return None if value is False or value == "" or value == "false" else value


def disabled_http(value: object) -> object:
    """``http:`` empty or ``http: false``: no HTTP server."""
    return {"listen": None} if value is None or value is False else value


def none_is_empty(value: object) -> object:
    return {} if value is None else value  # `logging:` with nothing under it: all defaults


def _listen_address(value: str) -> str:
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535 or " " in host:
        raise ValueError(f"expected host:port like 127.0.0.1:8080, got {shown_value(value)}")
    return value


_column = _matching(r"[A-Za-z_][A-Za-z0-9_]*", "expected a column name, got {value}")
_prefix_characters = _matching(
    r"[A-Za-z0-9_.:/-]{1,100}",
    "expected a message prefix of up to 100 characters A-Z, a-z, 0-9, '_', '.', ':', '/' "
    "and '-', got {value}",
)


def _message_prefix(value: str) -> str:
    if value == SNAPSHOT_PREFIX:
        raise ValueError(
            f"{SNAPSHOT_PREFIX} is reserved for the rows of `cdc-bridge snapshot`: "
            "choose another prefix"
        )
    return _prefix_characters(value)


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Column = Annotated[str, AfterValidator(_column)]
NonEmpty = Annotated[str, Field(min_length=1)]

SlotName = Annotated[
    str,
    AfterValidator(
        _matching(
            r"[a-z0-9_]{1,63}",
            "expected a slot name of up to 63 characters a-z, 0-9 and _, got {value}",
        )
    ),
]
PublicationName = Annotated[
    str,
    AfterValidator(
        _matching(
            r"[a-z_][a-z0-9_]{0,62}",
            "expected a publication name of up "
            "to 63 characters a-z, 0-9 and _ (not starting with a digit), "
            "got {value}",
        )
    ),
]
StreamName = Annotated[
    str,
    AfterValidator(
        _matching(
            r"[^\s.*>/\\\x00-\x1f\x7f]{1,255}",
            "expected a stream name without spaces, '.', '*', '>', '/' or '\\', got {value}",
        )
    ),
]
SubjectFilters = Annotated[
    tuple[Annotated[str, AfterValidator(check_subject_filter)], ...],
    BeforeValidator(_one_or_many),
    Field(min_length=1),
]
# One filter (wildcards allowed): the subjects this bridge alone writes in its stream.
SubjectFilter = Annotated[str, AfterValidator(check_subject_filter)]
Servers = Annotated[tuple[NonEmpty, ...], BeforeValidator(_server_list), Field(min_length=1)]

# "schema.table" (a bare name means public.name), each listed once.
TableName = Annotated[str, AfterValidator(_table_name)]
TableNames = Annotated[
    tuple[Annotated[str, AfterValidator(_table_name)], ...],
    BeforeValidator(_one_or_many),
    AfterValidator(_unique),
]
# Characters are limited to what wal2json's add-msg-prefixes list takes unescaped.
MessagePrefixes = Annotated[
    tuple[Annotated[str, AfterValidator(_message_prefix)], ...],
    BeforeValidator(_one_or_many),
    AfterValidator(_unique),
]

# A column, or a path into a json/jsonb column (payload.customer.region).
ColumnOrPath = Annotated[str, AfterValidator(check_placeholder)]
# `when:` (column or path: one or more patterns) -> ((key, patterns), ...); left out: ().
When = Annotated[
    tuple[tuple[str, tuple[str, ...]], ...],
    _Pairs(
        Annotated[
            dict[
                ColumnOrPath,
                Annotated[tuple[str, ...], BeforeValidator(_patterns), Field(min_length=1)],
            ]
            | None,
            AfterValidator(_non_empty_when),
            BeforeValidator(_path_booleans),
        ]
    ),
]
Headers = Annotated[
    tuple[tuple[str, str], ...],
    _Pairs(
        dict[
            Annotated[str, AfterValidator(_header_name)],
            Annotated[str, AfterValidator(_header_template)],
        ]
    ),
]
# cloudevents.extensions: (name, template) pairs, names by the spec's rule.
Extensions = Annotated[
    tuple[tuple[str, str], ...],
    _Pairs(
        dict[
            Annotated[str, AfterValidator(_extension_name)],
            Annotated[str, AfterValidator(_attribute_template)],
        ]
        | None
    ),
]
AttributeTemplate = Annotated[str, Field(min_length=1), AfterValidator(_attribute_template)]
MediaType = Annotated[str, AfterValidator(_media_type)]
Format = Literal["plain", "cloudevents", "cloudevents-structured"]
# "" (left out, or null): outbox.format.
RouteFormat = Annotated[str, AfterValidator(_format_name), WrapValidator(_none_as_empty)]
SubjectTemplate = Annotated[str, AfterValidator(_subject_template)]
ConcreteSubject = Annotated[str, AfterValidator(_concrete_subject)]
# "" (left out, or null): not given; BridgeConfig fills in the route's default.
RouteName = Annotated[str, Field(min_length=1), WrapValidator(_none_as_empty)]
PayloadColumn = Annotated[str, AfterValidator(_payload_column), WrapValidator(_none_as_empty)]
IdColumn = Annotated[str, AfterValidator(_id_column), WrapValidator(_none_as_empty)]

# None is `auto`: a failover slot on PostgreSQL 17+, a plain one before
FailoverSetting = Annotated[bool | None, BeforeValidator(_failover_setting)]
# auto: atomic batches where the server and the stream allow them (sink/atomic_mode.py)
AtomicSetting = Annotated[Literal["auto", True, False], BeforeValidator(_atomic_setting)]
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_log_level)]
Listen = Annotated[
    Annotated[str, AfterValidator(_listen_address)] | None, BeforeValidator(_disabled_listen)
]
