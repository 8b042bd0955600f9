"""How failures are classified: fatal (say it once, exit) or transient (retry).

``start_up_fix`` is the one place that decides which failures no retry can cure (most
are PostgreSQL's; NATS refusing the credentials is one too); the supervisor ends the
process on them until the bridge has streamed once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats.errors
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from cdc_bridge.sink.connect import NatsAuthError
from cdc_bridge.sink.publisher import PublishError
from cdc_bridge.source.replication import ReplicationError

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

# Failures a retry can cure: servers down or restarting, connections cut, acks lost.
# Every PostgreSQL error is here: start_up_fix picks out the ones that end the process.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.Error,
    ReplicationError,
    PublishError,
    nats.errors.Error,
    OSError,
    TimeoutError,
)

RESTART = "then restart PostgreSQL (a reload is not enough)"
WAL_LEVEL_FIX = f"ALTER SYSTEM SET wal_level = logical; {RESTART}"
AUTH_FIX = (
    "check the user and password in postgres.dsn or postgres.password_file against the "
    "server's roles and pg_hba.conf"
)
DATABASE_FIX = "check the database name in postgres.dsn"
# Which keys hold the credentials NATS refused, by nats.auth's method.
_NATS_CREDENTIALS = {
    "user/password": "nats.user and nats.password (or nats.password_file)",
    "token": "nats.token (or nats.token_file)",
    "nkey": "the seed in nats.nkey_seed_file",
    "creds": "the user JWT and seed in nats.creds_file (expired or revoked?)",
}


def nats_auth_fix(config: BridgeConfig) -> str:
    """The fix for credentials the NATS server refused: which keys to check, and where."""
    method = config.nats.auth.method
    if method == "none":
        return (
            "the server requires authentication: set nats.user and nats.password (or "
            "nats.token, nats.nkey_seed_file, nats.creds_file); see docs/security.md"
        )
    return (
        f"check {_NATS_CREDENTIALS[method]} against the users in the server's "
        "authorization block (or its account's JWTs); see docs/security.md"
    )


def output_plugin_fix(plugin: str) -> str:
    """The fix for a server whose output_plugin_libraries leaves ``plugin`` out: shared
    by `check` and `run`, so both say the same."""
    alternative = "; or set postgres.plugin: pgoutput" if plugin != "pgoutput" else ""
    return (
        f"add {plugin} to output_plugin_libraries, as a superuser: ALTER SYSTEM SET "
        f"output_plugin_libraries = '<the current list>, {plugin}'; SELECT pg_reload_conf()"
        f"{alternative}"
    )


def replication_role_fix(role: str) -> str:
    return f"ALTER ROLE {role} REPLICATION"


# libpq reports a refused connection without its SQLSTATE (psycopg's OperationalError
# then has none): the server's own words say which it was.
_REFUSED_CONNECTIONS: tuple[tuple[re.Pattern[str], type[psycopg.Error]], ...] = (
    (re.compile(r"password authentication failed|no password supplied"), pg_errors.InvalidPassword),
    (
        re.compile(
            r'role "[^"]*" does not exist|authentication failed for user|no pg_hba\.conf entry'
            r'|pg_hba\.conf rejects connection|role "[^"]*" is not permitted to log in'
        ),
        pg_errors.InvalidAuthorizationSpecification,
    ),
    (re.compile(r'database "[^"]*" does not exist'), pg_errors.InvalidCatalogName),
    (
        # PostgreSQL 15 and older; 16 and newer
        re.compile(r"superuser or replication role to start walsender|to start WAL sender"),
        pg_errors.InsufficientPrivilege,
    ),
)


def postgres_error_class(exc: BaseException) -> type[psycopg.Error] | None:
    """psycopg's class for the SQLSTATE of a PostgreSQL failure; None when unknown."""
    said = exc.error if isinstance(exc, ReplicationError) else exc  # psycopg's class for it
    if isinstance(said, psycopg.Error) and said.sqlstate:
        return type(said)
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc)
        for pattern, error_class in _REFUSED_CONNECTIONS:
            if pattern.search(text):
                return error_class
    return None


# (the failure, the config) -> its fix, or None when a retry may cure it after all
_Fix = Callable[[BaseException, "BridgeConfig"], str | None]


def _wal_level(exc: BaseException, config: BridgeConfig) -> str | None:
    # 55000 also says "cannot be used while in recovery": a standby a retry may find
    # promoted (a multi-host DSN with target_session_attrs)
    message = str(exc)
    if "wal_level" not in message:
        return None
    # A standby decodes only what its primary logged at wal_level = logical.
    if config.postgres.source == "standby" and "on the primary" in message:
        return primary_wal_level_fix(config)
    return WAL_LEVEL_FIX


def primary_wal_level_fix(config: BridgeConfig) -> str:
    """postgres.source: standby with a primary whose wal_level is below logical: the
    fix is the primary's, not the standby's (`run`, `init` and `check` say this)."""
    where = "postgres.primary_dsn"
    try:
        params = conninfo_to_dict(config.postgres.primary_dsn or "")
    except psycopg.Error:
        params = {}
    if params.get("host"):
        where = f"{params['host']}:{params.get('port') or 5432} (postgres.primary_dsn)"
    return f"on the primary {where}: ALTER SYSTEM SET wal_level = logical; then restart it"


def _privilege(exc: BaseException, config: BridgeConfig) -> str:
    message, role = str(exc), _role(config)
    if "may not be used as an output plugin" in message:
        return output_plugin_fix(config.postgres.plugin)
    if re.search(r"replication role|WAL sender|REPLICATION attribute", message):
        return replication_role_fix(role)
    return f"grant role {role} what it needs (sql/role.sql, docs/security.md)"


def _library(exc: BaseException, config: BridgeConfig) -> str | None:
    plugin = config.postgres.plugin
    if plugin not in str(exc):
        return None
    return f"install {plugin} on the database server, or use plugin: pgoutput"


def _refused(exc: BaseException, config: BridgeConfig) -> str:
    # The server refused what the bridge asked (a missing object, a bad plugin option,
    # a feature this version lacks): asking again gets the same answer.
    hint = getattr(getattr(exc, "diag", None), "message_hint", None)
    return hint or "fix what the server's message names, then start the bridge again"


# First match wins: the specific classes, then the broad ones they belong to.
_START_UP_FIXES: tuple[tuple[type[psycopg.Error], _Fix], ...] = (
    (pg_errors.ObjectNotInPrerequisiteState, _wal_level),
    (pg_errors.InsufficientPrivilege, _privilege),
    (pg_errors.InvalidPassword, lambda exc, config: AUTH_FIX),
    (pg_errors.InvalidAuthorizationSpecification, lambda exc, config: AUTH_FIX),
    (pg_errors.InvalidCatalogName, lambda exc, config: DATABASE_FIX),
    (pg_errors.UndefinedFile, _library),
    (pg_errors.DuplicateObject, lambda exc, config: None),  # raced `init`: it exists now
    (psycopg.ProgrammingError, _refused),
    (psycopg.DataError, _refused),
    (psycopg.NotSupportedError, _refused),
)


def start_up_fix(exc: BaseException, config: BridgeConfig) -> str | None:
    """The fix for a failure no retry can cure; None: retry it. NATS refusing the
    credentials is one; the rest are PostgreSQL's.

    Keyed by psycopg's error classes. Servers down, restarting, full or unreachable
    (connection errors, class 08, 53, 57) are not in the table: always retried.
    """
    if isinstance(exc, NatsAuthError):
        return nats_auth_fix(config)
    error_class = postgres_error_class(exc)
    if error_class is None:
        return None
    for known, fix in _START_UP_FIXES:
        if issubclass(error_class, known):
            return fix(exc, config)
    return None


def _role(config: BridgeConfig) -> str:
    try:
        user = conninfo_to_dict(config.postgres.dsn).get("user")
    except psycopg.Error:
        user = None
    return str(user) if user else "<the bridge's role>"
