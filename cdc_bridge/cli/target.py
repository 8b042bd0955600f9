"""What a command works on: a config file, or just a DSN where only PostgreSQL matters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from cdc_bridge.cli.errors import OpsError, UsageError, describe_postgres_error
from cdc_bridge.config.load import load_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.source.catalog import AsyncConn, SlotInfo, get_slot

DEFAULT_CONNECT_TIMEOUT = 10.0
# A URL's userinfo password, or a keyword DSN's password value.
_PASSWORD_LIKE = re.compile(r"://[^:/?#@\s]*:([^\s]*)@|password\s*=\s*'?([^\s']*)")


@dataclass(frozen=True, slots=True)
class Target:
    dsn: str = field(repr=False)  # may hold a password
    config: BridgeConfig | None  # None: only --dsn was given
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @property
    def publication(self) -> str | None:
        return self.config.postgres.publication if self.config is not None else None

    @property
    def password(self) -> str | None:
        return password_for(self.config, self.dsn)


def password_for(config: BridgeConfig | None, dsn: str) -> str | None:
    """postgres.password_file's password, for the config's own DSN only: a ``--dsn``
    given instead names another target, with its own way to authenticate."""
    if config is None or dsn != config.postgres.dsn:
        return None
    return config.postgres.password


def resolve_target(config_path: str | None, dsn: str | None) -> Target:
    """``--config FILE`` (its postgres.dsn, unless ``--dsn`` overrides it) or ``--dsn``."""
    if config_path is None and dsn is None:
        raise UsageError("give --config FILE or --dsn DSN")
    config = load_config(config_path) if config_path is not None else None
    if config is None:
        assert dsn is not None
        return Target(dsn=dsn, config=None)
    return Target(
        dsn=dsn if dsn is not None else config.postgres.dsn,
        config=config,
        connect_timeout=config.postgres.connect_timeout,
    )


def require_config(config_path: str | None) -> BridgeConfig:
    if config_path is None:
        raise UsageError("this command needs --config FILE (it checks NATS as well)")
    return load_config(config_path)


async def connect_postgres(
    dsn: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, *, password: str | None = None
) -> psycopg.AsyncConnection[TupleRow]:
    """An autocommit connection named ``cdc-bridge-ops`` in pg_stat_activity.

    ``password`` (see ``password_for``) is a libpq parameter of its own, not DSN text.
    """
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except psycopg.Error as exc:
        # libpq's parse errors quote pieces of the DSN: cut out anything password-like.
        message = describe_postgres_error(exc)
        for groups in _PASSWORD_LIKE.findall(dsn):
            for secret in groups:
                if secret:
                    message = message.replace(secret, "***")
        raise OpsError(f"invalid PostgreSQL DSN: {message}") from None
    params.setdefault("application_name", "cdc-bridge-ops")
    params.setdefault("connect_timeout", str(max(int(connect_timeout), 1)))
    return await psycopg.AsyncConnection.connect(
        make_conninfo("", **params), autocommit=True, password=password
    )


async def require_slot(conn: AsyncConn, name: str) -> SlotInfo:
    """The slot named ``name``, or the one line that says there is none."""
    slot = await get_slot(conn, name)
    if slot is None:
        raise OpsError(f"no logical replication slot named {name} (see `cdc-bridge slots list`)")
    return slot
