"""The configuration the bridge runs with: one frozen pydantic model per section of the
YAML file, its fields named as the file's keys (config/example.yaml documents them all).

The models are the schema and the values at once: config/load.py validates the file into
them. What follows from the keys is computed once, while loading, and read as plain
attributes: a route's defaults (from the outbox section), its parsed templates, the HTTP
host and port, the secrets read from ``*_file`` keys, and the redactor that hides them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)

from cdc_bridge.config.schema import (
    BUILT_PAYLOADS,
    CHANGE_PAYLOADS,
    AtomicSetting,
    AttributeTemplate,
    Column,
    ConcreteSubject,
    Duration,
    Extensions,
    FailoverSetting,
    Format,
    Headers,
    IdColumn,
    Listen,
    LogLevel,
    MediaType,
    MessagePrefixes,
    NonEmpty,
    PayloadColumn,
    PositiveDuration,
    PublicationName,
    RouteFormat,
    RouteName,
    Servers,
    SlotName,
    StreamName,
    SubjectFilter,
    SubjectFilters,
    SubjectTemplate,
    TableName,
    TableNames,
    When,
    disabled_http,
    none_is_empty,
)
from cdc_bridge.core.dsn import dsn_value
from cdc_bridge.core.redaction import Redactor, secrets_in
from cdc_bridge.core.subjects import common_space
from cdc_bridge.core.templates import (
    ACTION_PSEUDO_COLUMN,
    TABLE_PSEUDO_COLUMN,
    Template,
    parse_template,
    split_path,
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresConfig(Section):
    dsn: NonEmpty = Field(repr=False)  # may hold a password: use redact_dsn() to show it
    slot: SlotName = "cdc_bridge"
    publication: PublicationName = "cdc_bridge"
    plugin: Literal["pgoutput", "wal2json"] = "pgoutput"
    status_interval: PositiveDuration = 10.0
    connect_timeout: PositiveDuration = 10.0
    password_file: NonEmpty | None = None
    # What the bridge does when its slot is lost (invalidated, dropped, gone after a
    # failover): stop (today's behaviour), or republish the retained outbox rows the
    # stream lacks from a new slot's snapshot and carry on (bridge/recovery.py).
    on_slot_lost: Literal["fail", "recover"] = "fail"
    # Create the slot as a failover slot (PostgreSQL 17+): None (auto) = where the server can
    failover: FailoverSetting = None
    # Where the slot lives: the primary, or a hot standby (16+; then primary_dsn is needed
    # for the publication and standby snapshots, which a standby cannot do)
    source: Literal["primary", "standby"] = "primary"
    primary_dsn: NonEmpty | None = Field(default=None, repr=False)
    _password: str | None = PrivateAttr(default=None)

    @property
    def password(self) -> str | None:
        """password_file's content, read at start-up: given to libpq as its own
        ``password`` parameter, never written into the DSN (which is logged, redacted,
        and shown by the ops commands)."""
        return self._password

    @property
    def database(self) -> str:
        """The database the DSN names (for CloudEvents' default source and Debezium's
        source.db): its dbname, else its user (libpq's default), else "postgres"."""
        return dsn_value(self.dsn, "dbname") or dsn_value(self.dsn, "user") or "postgres"


class StreamConfig(Section):
    """The stream the bridge creates when it is missing (an existing one is left as is)."""

    name: StreamName
    subjects: SubjectFilters
    duplicate_window: Duration = 120.0  # seconds
    storage: Literal["file", "memory"] = "file"
    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    max_age: Duration = 0.0  # seconds; 0 = unlimited
    # Atomic batches allowed (nats-server 2.12+; older servers ignore the field).
    allow_atomic: bool = True
    # Fast-ingest batches allowed (nats-server 2.14+; older servers ignore the field).
    allow_batched: bool = True


class NatsTlsConfig(Section):
    """TLS towards NATS: the server is always verified (ca_file, or the system's CAs)."""

    ca_file: NonEmpty | None = None
    cert_file: NonEmpty | None = None  # a client certificate, for servers that verify clients
    key_file: NonEmpty | None = None


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """How the bridge authenticates to NATS: at most one method is set (checked on load).

    Not a section of the file: the auth keys of ``nats``, with the ``*_file`` keys read
    (config/secrets.py), so these hold the secrets themselves.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)  # from nats.nkey_seed_file
    credentials: str | None = field(default=None, repr=False)  # creds_file's text (JWT + seed)
    credentials_seed: str | None = field(default=None, repr=False)  # the seed in credentials

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
        candidates = (self.password, self.token, self.nkey_seed, self.credentials_seed)
        return {secret for secret in candidates if secret is not None}


class NatsConfig(Section):
    servers: Servers
    stream: StreamConfig
    ack_timeout: PositiveDuration = 5.0
    max_in_flight: Annotated[int, Field(ge=1)] = 4096
    # Each source transaction as one JetStream atomic batch: auto = where the server
    # (2.12+) and the stream (allow_atomic) allow it; sink/atomic_mode.py decides.
    atomic_transactions: AtomicSetting = "auto"
    # Messages per atomic batch at most: the server's jetstream.limits.batch.max_msgs
    # (1000 unless its config says otherwise).
    batch_max_messages: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    # Per-message mode through fast-ingest batches: auto = where the server (2.14+) and
    # the stream (allow_batched) allow them; sink/fast_mode.py decides.
    fast_ingest: AtomicSetting = "auto"
    connect_timeout: PositiveDuration = 5.0
    # The subjects only this bridge writes (the order guard and reconcile look only
    # there); None: BridgeConfig.subject_space derives it from the routes.
    subject_space: SubjectFilter | None = None
    tls: NatsTlsConfig | None = None  # None: plain TCP, unless a tls:// server URL says TLS
    # One way to authenticate, at most: config/secrets.py checks the combination and
    # reads the files; `auth` holds the outcome.
    user: NonEmpty | None = None
    password: NonEmpty | None = Field(default=None, repr=False)
    password_file: NonEmpty | None = None
    token: NonEmpty | None = Field(default=None, repr=False)
    token_file: NonEmpty | None = None
    nkey_seed_file: NonEmpty | None = None
    creds_file: NonEmpty | None = None
    _auth: NatsAuth = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        # Right for a config without *_file keys; loading replaces it once they are read.
        self._auth = NatsAuth(user=self.user, password=self.password, token=self.token)

    @property
    def auth(self) -> NatsAuth:
        return self._auth


class OutboxConfig(Section):
    # Before `table`: its check reads these two (pydantic validates in field order).
    # Prefixes of transactional logical decoding messages that are events (messages.py);
    # empty: messages are ignored. With prefixes, ``tables`` may be empty.
    message_prefixes: MessagePrefixes = ()
    # Ordinary tables whose inserts, updates and deletes are change events
    # (change_events.py); never also in ``tables``.
    change_tables: TableNames = ()
    tables: TableNames = Field(default=("public.outbox",), alias="table")  # "schema.table"
    id_column: Column = "id"
    payload_column: Column = "payload"
    headers_column: Column | None = "headers"  # None: rows carry no headers
    format: Format = "plain"  # every route's, unless the route sets its own
    # Progress of `cdc-bridge snapshot` (one row per snapshot and table, written in the
    # same transaction as each chunk's messages): created by the command when missing.
    snapshot_table: TableName = "public.cdc_bridge_snapshots"
    # When the bridge creates its slot, it snapshots the change tables first, as
    # `cdc-bridge snapshot` does (bridge/initial_snapshot.py).
    snapshot_on_create: bool = False

    @field_validator("snapshot_on_create")
    @classmethod
    def _snapshot_needs_change_tables(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("change_tables"):
            raise ValueError(
                "true needs outbox.change_tables: it snapshots those tables when the slot "
                "is created (outbox tables need none: their rows are events already)"
            )
        return value

    @field_validator("tables")
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


class CloudEventsConfig(Section):
    """A route's CloudEvents attributes (routing/cloudevents.py), as ``{column}``
    templates; None: the default, filled in per row by the router."""

    source: AttributeTemplate | None = None  # "/cdc-bridge/<database>/{table}"
    type: AttributeTemplate | None = None  # {event_type}; a change: "{table}.{action}"
    subject: AttributeTemplate | None = None  # {aggregate_id}, left out when missing
    datacontenttype: MediaType | None = None  # application/json (octet-stream for bytea)
    extensions: Extensions = ()  # (name, template)
    _templates: dict[str, Template | None] = PrivateAttr()
    _extension_templates: tuple[tuple[str, Template], ...] = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        given = {"source": self.source, "type": self.type, "subject": self.subject}
        self._templates = {k: None if v is None else parse_template(v) for k, v in given.items()}
        self._extension_templates = tuple((n, parse_template(t)) for n, t in self.extensions)

    def template(self, attribute: str) -> Template | None:
        """``source``, ``type`` or ``subject`` parsed; None when the file leaves it out."""
        return self._templates[attribute]

    @property
    def extension_templates(self) -> tuple[tuple[str, Template], ...]:
        return self._extension_templates

    def columns(self) -> set[str]:
        templates = [t for t in self._templates.values() if t is not None]
        templates += [t for _, t in self._extension_templates]
        return {column for template in templates for column in template.columns}


class RouteConfig(Section):
    # name, payload and id: "" when the file leaves them out, until BridgeConfig fills
    # in their defaults (routes[<index>], outbox.payload_column, outbox.id_column).
    name: RouteName = ""
    when: When = ()  # (column, alternatives); empty = every row
    subject: SubjectTemplate
    headers: Headers = ()  # (header name, template)
    payload: PayloadColumn = ""  # a column, or row, change, debezium
    id: IdColumn = ""  # the column for Nats-Msg-Id
    format: RouteFormat = ""  # "" until BridgeConfig fills in outbox.format
    cloudevents: Annotated[CloudEventsConfig, BeforeValidator(none_is_empty)] = Field(
        default_factory=CloudEventsConfig
    )
    _id_given: bool = PrivateAttr()
    _subject_template: Template = PrivateAttr()
    _header_templates: tuple[tuple[str, Template], ...] = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._id_given = bool(self.id)
        self._subject_template = parse_template(self.subject)
        self._header_templates = tuple((name, parse_template(t)) for name, t in self.headers)

    @property
    def id_given(self) -> bool:
        """Whether the route names its `id` column itself. Change events use it only then:
        otherwise they get "<commit LSN>-<index>", since the default id column of a
        changed table (its key, say) repeats on every change of the same row."""
        return self._id_given

    @property
    def subject_template(self) -> Template:
        return self._subject_template

    @property
    def header_templates(self) -> tuple[tuple[str, Template], ...]:
        return self._header_templates

    def placeholders_by_key(self) -> list[tuple[str, str]]:
        """(the key, a column or path it reads) for `when`, `subject` and `headers`."""
        found = [("when", key) for key, _ in self.when]
        found.extend(("subject", name) for name in self._subject_template.columns)
        for header, template in self._header_templates:
            found.extend((f"headers.{header}", name) for name in template.columns)
        return found

    def placeholders(self) -> set[str]:
        return {placeholder for _, placeholder in self.placeholders_by_key()}

    def with_defaults(self, index: int, outbox: OutboxConfig) -> RouteConfig:
        return self.model_copy(
            update={
                "name": self.name or f"routes[{index}]",
                "payload": self.payload or outbox.payload_column,
                "id": self.id or outbox.id_column,
                "format": self.format or outbox.format,
            }
        )


class DeadLetterConfig(Section):
    subject: ConcreteSubject


class LoggingConfig(Section):
    format: Literal["json", "console"] = "json"
    level: LogLevel = "info"


class HttpConfig(Section):
    listen: Listen = "127.0.0.1:8080"  # "host:port"; None = no HTTP server
    _host: str | None = PrivateAttr(default=None)
    _port: int | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if self.listen is not None:
            host, _, port = self.listen.rpartition(":")
            self._host, self._port = host.strip("[]"), int(port)

    @property
    def host(self) -> str | None:
        return self._host

    @property
    def port(self) -> int | None:
        return self._port


class AuditConfig(Section):
    """The audit the leading bridge runs while it streams (bridge/continuous_audit.py):
    the same comparison as `cdc-bridge audit`, over the rows created in
    [now - window, now - settle)."""

    interval: Duration = 0.0  # seconds between runs; 0 = no continuous audit
    window: PositiveDuration = 3600.0  # how far back each run looks
    # Rows younger than this are left out: the bridge may not have published them yet.
    settle: Duration = 60.0


class BridgeConfig(Section):
    postgres: PostgresConfig
    nats: NatsConfig
    outbox: Annotated[OutboxConfig, BeforeValidator(none_is_empty)] = Field(
        default_factory=OutboxConfig
    )
    routes: Annotated[tuple[RouteConfig, ...], Field(min_length=1)]
    dead_letter: DeadLetterConfig | None = None  # None: a poison row stops the bridge
    logging: Annotated[LoggingConfig, BeforeValidator(none_is_empty)] = Field(
        default_factory=LoggingConfig
    )
    shutdown_timeout: Duration = 10.0
    stall_timeout: Duration = 60.0  # events in flight but no ack for this long: not ready
    http: Annotated[HttpConfig, BeforeValidator(disabled_http)] = Field(default_factory=HttpConfig)
    audit: Annotated[AuditConfig, BeforeValidator(none_is_empty)] = Field(
        default_factory=AuditConfig
    )
    _secrets: frozenset[str] = PrivateAttr()
    _redactor: Redactor = PrivateAttr()
    _subject_space: str | None = PrivateAttr()

    @field_validator("routes")
    @classmethod
    def _route_defaults(
        cls, routes: tuple[RouteConfig, ...], info: ValidationInfo
    ) -> tuple[RouteConfig, ...]:
        outbox = info.data.get("outbox")
        if not isinstance(outbox, OutboxConfig):
            return routes  # the outbox section's problems are reported: no config results
        return tuple(route.with_defaults(index, outbox) for index, route in enumerate(routes))

    def model_post_init(self, context: Any) -> None:
        self._collect_secrets()
        self._subject_space = self.nats.subject_space or common_space(self.produced_subjects())

    def produced_subjects(self) -> list[str]:
        """Every subject the bridge can publish to, as filters (a placeholder is one
        token: ``*``): the routes' subjects and the dead-letter subject."""
        filters = ["*".join(route.subject_template.literals) for route in self.routes]
        if self.dead_letter is not None:
            filters.append(self.dead_letter.subject)
        return filters

    @property
    def subject_space(self) -> str | None:
        """``nats.subject_space``, or the one prefix the routes and dead-letter subject
        share; None when they share none (the order guard is then stream-wide)."""
        return self._subject_space

    def hold_secrets(self, postgres_password: str | None, nats_auth: NatsAuth) -> None:
        """The secrets read from the ``*_file`` keys. Called once, by config/load.py
        before the config is handed out: the models stay frozen to everyone else."""
        self.postgres._password = postgres_password
        self.nats._auth = nats_auth
        self._collect_secrets()

    def _collect_secrets(self) -> None:
        found = secrets_in(self.postgres.dsn) | self.nats.auth.secrets()
        if self.postgres.primary_dsn is not None:
            found |= secrets_in(self.postgres.primary_dsn)
        if self.postgres.password is not None:
            found.add(self.postgres.password)
        for server in self.nats.servers:
            found |= secrets_in(server)
        self._secrets = frozenset(found)
        self._redactor = Redactor(self._secrets)

    def secrets(self) -> frozenset[str]:
        """Every secret this config holds or names, as literals for ``redaction.redact``:
        the DSN's password, NATS URLs' passwords and tokens, the ``*_file`` contents."""
        return self._secrets

    def redactor(self) -> Redactor:
        """``redact`` with this config's secrets: for the boundaries (logs, /status)."""
        return self._redactor

    def template_columns(self) -> set[str]:
        """Every real column the routes read, for checking against the live tables."""
        columns: set[str] = set()
        for route in self.routes:
            columns.update(split_path(key)[0] for key in route.placeholders())
            if route.payload not in BUILT_PAYLOADS:
                columns.add(route.payload)
            if route.format != "plain":
                columns.update(split_path(c)[0] for c in route.cloudevents.columns())
            if route.id_given or route.payload not in CHANGE_PAYLOADS:
                columns.add(route.id)
        columns.discard(TABLE_PSEUDO_COLUMN)
        if self.outbox.change_tables:
            columns.discard(ACTION_PSEUDO_COLUMN)  # a change's action, not a column
        return columns

    def json_paths(self) -> dict[str, tuple[str, str]]:
        """Column -> (the first key that reads a path inside it, that path), e.g.
        ``payload`` -> (``routes[0].subject``, ``payload.customer.region``): the columns
        that must be json or jsonb."""
        paths: dict[str, tuple[str, str]] = {}
        for index, route in enumerate(self.routes):
            for key, placeholder in route.placeholders_by_key():
                column, keys = split_path(placeholder)
                if keys:
                    paths.setdefault(column, (f"routes[{index}].{key}", placeholder))
        return paths
