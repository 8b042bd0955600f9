"""Configuration: YAML text -> env expansion -> validation -> frozen values.

Every problem in a config file becomes one line, ``config.yaml:12: routes[1].subject:
<message>``, and all problems are reported at once so a broken file is fixed in one
round. Secrets never appear in those lines: values under keys named like a DSN,
password or token are shown as ``<redacted>``, and any echoed URL loses its password.

The work is split by job: ``_yaml_source`` (YAML with line numbers, ``${VAR}``
expansion, the problem list), ``_config_schema`` (the pydantic models of the file),
``_validation_errors`` (pydantic errors -> plain lines), ``templates`` (``{column}``
templates and subject checks) and ``redaction``. This module holds the frozen values the
rest of the bridge uses, and re-exports what other modules import from here.

``config/example.yaml`` documents every key.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cdc_bridge.config.schema import CHANGE_PAYLOAD, ROW_PAYLOAD, ConfigFile, RouteSection
from cdc_bridge.config.secrets import SecretValues, credentials_seed, load_secrets
from cdc_bridge.config.validation import add_validation_problems
from cdc_bridge.config.yaml_source import (
    ConfigError,
    KeyPath,
    Problems,
    expand_env,
    format_key_path,
    read_yaml,
)
from cdc_bridge.core.redaction import Redactor, redact_dsn, secrets_in, shown_value
from cdc_bridge.core.templates import (
    ACTION_PSEUDO_COLUMN,
    TABLE_PSEUDO_COLUMN,
    Template,
    check_subject_template,
    parse_template,
)

# The schema under the names tests/unit/test_config.py reads it by.
_ConfigFile = ConfigFile
_RouteSection = RouteSection

__all__ = [
    "ACTION_PSEUDO_COLUMN",
    "CHANGE_PAYLOAD",
    "ROW_PAYLOAD",
    "TABLE_PSEUDO_COLUMN",
    "BridgeConfig",
    "ConfigError",
    "DeadLetterConfig",
    "HttpConfig",
    "KeyPath",
    "LoggingConfig",
    "NatsAuthConfig",
    "NatsConfig",
    "NatsTlsConfig",
    "OutboxConfig",
    "PostgresConfig",
    "RouteConfig",
    "StreamConfig",
    "Template",
    "check_subject_template",
    "format_key_path",
    "load_config",
    "parse_config",
    "parse_template",
    "redact_dsn",
]

# ---------------------------------------------------------------------------------------
# Public values
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = field(repr=False)  # may hold a password: use redact_dsn() to show it
    slot: str
    publication: str
    plugin: str  # "pgoutput" | "wal2json"
    status_interval: float  # seconds
    connect_timeout: float
    # From postgres.password_file: given to libpq as its `password` parameter, never
    # written into the DSN (which is logged, redacted, and shown by the ops commands).
    password: str | None = field(default=None, repr=False)
    # postgres.failover: None = auto (a failover slot on PostgreSQL 17+), else as set
    failover: bool | None = None
    source: str = "primary"  # "primary" | "standby": where the slot lives (dsn's server)
    primary_dsn: str | None = field(default=None, repr=False)  # with source standby


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
class NatsTlsConfig:
    """TLS towards NATS: the server is always verified (ca_file, or the system's CAs)."""

    ca_file: str | None = None
    cert_file: str | None = None  # a client certificate, for servers that verify clients
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class NatsAuthConfig:
    """How the bridge authenticates to NATS: at most one method is set (checked on load).

    The ``*_file`` keys were read at start-up: these hold the secrets themselves.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)  # from nats.nkey_seed_file
    credentials: str | None = field(default=None, repr=False)  # creds_file's text (JWT + seed)

    @property
    def method(self) -> str:
        """``user/password``, ``token``, ``nkey``, ``creds`` or ``none``: for log lines."""
        if self.credentials is not None:
            return "creds"
        if self.nkey_seed is not None:
            return "nkey"
        if self.token is not None:
            return "token"
        return "user/password" if self.user is not None else "none"

    def secrets(self) -> set[str]:
        found = {s for s in (self.password, self.token, self.nkey_seed) if s is not None}
        if self.credentials is not None:
            seed = credentials_seed(self.credentials)
            if seed is not None:
                found.add(seed)
        return found


@dataclass(frozen=True, slots=True)
class NatsConfig:
    servers: tuple[str, ...]
    stream: StreamConfig
    ack_timeout: float
    max_in_flight: int
    connect_timeout: float
    tls: NatsTlsConfig | None = None  # None: plain TCP, unless a tls:// server URL says TLS
    auth: NatsAuthConfig = NatsAuthConfig()


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    tables: tuple[str, ...]  # "schema.table"
    id_column: str
    payload_column: str
    headers_column: str | None  # None: rows carry no headers
    # Prefixes of transactional logical decoding messages that are events (messages.py);
    # empty: messages are ignored. With prefixes, ``tables`` may be empty.
    message_prefixes: tuple[str, ...] = ()
    # "schema.table": ordinary tables whose inserts, updates and deletes are change
    # events (change_events.py); never also in ``tables``.
    change_tables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    when: tuple[tuple[str, tuple[str, ...]], ...]  # (column, alternatives); empty = every row
    subject: str  # template
    headers: tuple[tuple[str, str], ...]  # (header name, template)
    payload: str  # a column, ROW_PAYLOAD or CHANGE_PAYLOAD; outbox.payload_column when not given
    id: str  # column for Nats-Msg-Id; outbox.id_column when not given
    # Whether the route names its `id` column itself. Change events use it only then:
    # otherwise they get "<commit LSN>-<index>", since the default id column of a
    # changed table (its key, say) repeats on every change of the same row.
    id_given: bool = True


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
    stall_timeout: float  # events in flight but no ack for this long: not ready
    http: HttpConfig

    def secrets(self) -> frozenset[str]:
        """Every secret this config holds or names, as literals for ``redaction.redact``:
        the DSN's password, NATS URLs' passwords and tokens, the ``*_file`` contents."""
        found = secrets_in(self.postgres.dsn) | self.nats.auth.secrets()
        if self.postgres.primary_dsn is not None:
            found |= secrets_in(self.postgres.primary_dsn)
        if self.postgres.password is not None:
            found.add(self.postgres.password)
        for server in self.nats.servers:
            found |= secrets_in(server)
        return frozenset(found)

    def redactor(self) -> Redactor:
        """``redact`` with this config's secrets: for the boundaries (logs, /status)."""
        return Redactor(self.secrets())

    def template_columns(self) -> set[str]:
        """Every real column the routes read, for checking against the live tables."""
        columns: set[str] = set()
        for route in self.routes:
            columns.update(column for column, _ in route.when)
            columns.update(parse_template(route.subject).columns)
            for _, template in route.headers:
                columns.update(parse_template(template).columns)
            if route.payload not in (ROW_PAYLOAD, CHANGE_PAYLOAD):
                columns.add(route.payload)
            if route.id_given or route.payload != CHANGE_PAYLOAD:
                columns.add(route.id)
        columns.discard(TABLE_PSEUDO_COLUMN)
        if self.outbox.change_tables:
            columns.discard(ACTION_PSEUDO_COLUMN)  # a change's action, not a column
        return columns


# ---------------------------------------------------------------------------------------
# Whole-file checks and the public values
# ---------------------------------------------------------------------------------------


def _check_routes(routes: object, problems: Problems) -> None:
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


def _check_change_routes(checked: ConfigFile, problems: Problems) -> None:
    """`payload: change` publishes change tables' changes: without any it can only fail."""
    if checked.outbox.change_tables:
        return
    for index, route in enumerate(checked.routes):
        if route.payload == CHANGE_PAYLOAD:
            problems.add(
                ("routes", index, "payload"),
                "`change` publishes changes of outbox.change_tables, and none are listed",
            )


def _build(checked: ConfigFile, secrets: SecretValues) -> BridgeConfig:
    pg, nats, outbox = checked.postgres, checked.nats, checked.outbox
    stream = nats.stream
    tls = nats.tls
    return BridgeConfig(
        postgres=PostgresConfig(
            dsn=pg.dsn,
            slot=pg.slot,
            publication=pg.publication,
            plugin=pg.plugin,
            status_interval=pg.status_interval,
            connect_timeout=pg.connect_timeout,
            password=secrets.postgres_password,
            failover=None if pg.failover == "auto" else bool(pg.failover),
            source=pg.source,
            primary_dsn=pg.primary_dsn,
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
            tls=(
                NatsTlsConfig(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)
                if tls is not None
                else None
            ),
            auth=NatsAuthConfig(
                user=nats.user,
                password=secrets.nats_password,
                token=secrets.nats_token,
                nkey_seed=secrets.nats_nkey_seed,
                credentials=secrets.nats_credentials,
            ),
        ),
        outbox=OutboxConfig(
            tables=outbox.table,
            id_column=outbox.id_column,
            payload_column=outbox.payload_column,
            headers_column=outbox.headers_column,
            message_prefixes=outbox.message_prefixes,
            change_tables=outbox.change_tables,
        ),
        routes=tuple(
            RouteConfig(
                name=route.name or f"routes[{index}]",
                when=tuple((column, values) for column, values in (route.when or {}).items()),
                subject=route.subject,
                headers=tuple(route.headers.items()),
                payload=route.payload or outbox.payload_column,
                id=route.id or outbox.id_column,
                id_given=route.id is not None,
            )
            for index, route in enumerate(checked.routes)
        ),
        dead_letter=(
            DeadLetterConfig(checked.dead_letter.subject) if checked.dead_letter else None
        ),
        logging=LoggingConfig(format=checked.logging.format, level=checked.logging.level),
        shutdown_timeout=checked.shutdown_timeout,
        stall_timeout=checked.stall_timeout,
        http=HttpConfig(listen=checked.http.listen),
    )


def parse_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Validate config text; ConfigError lists every problem, one line each."""
    problems = Problems(source)
    data = read_yaml(text, problems)
    problems.raise_if_any()
    if not isinstance(data, dict):
        what = "the file is empty" if data is None else f"found {shown_value(data)}"
        problems.add((), f"expected a mapping of sections (postgres:, nats:, routes: ...); {what}")
        problems.raise_if_any()
    failed: set[KeyPath] = set()
    environment = os.environ if env is None else env
    data = typing.cast(dict[str, object], expand_env(data, (), environment, problems, failed))
    _check_routes(data.get("routes"), problems)
    try:
        checked = ConfigFile.model_validate(data)
    except ValidationError as exc:
        add_validation_problems(exc, data, problems, failed)
        problems.raise_if_any()
        raise AssertionError("validation failed without problems") from exc
    _check_change_routes(checked, problems)
    problems.raise_if_any()
    secrets = load_secrets(checked, problems)
    problems.raise_if_any()
    return _build(checked, secrets)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read and validate a config file (``env`` defaults to the process environment)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config file is not UTF-8 text ({exc.reason})"]) from exc
    return parse_config(text, source=str(path), env=env)
