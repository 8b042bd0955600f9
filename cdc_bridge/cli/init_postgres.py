"""The PostgreSQL half of ``cdc-bridge init``: the outbox tables, the publication and the
slot, each one step that says what it did, or what creating it needs and who can.

Also the step records both halves report (the NATS half, the stream, is in init.py).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

import nats.errors
import psycopg
from psycopg import sql

from cdc_bridge.bridge.failures import start_up_fix
from cdc_bridge.cli.errors import (
    OpsError,
    describe_error,
    describe_postgres_error,
)
from cdc_bridge.cli.render import lsn_text
from cdc_bridge.cli.target import connect_postgres, password_for
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.errors import FatalError
from cdc_bridge.source.catalog import AsyncConn, create_slot, current_database, get_slot
from cdc_bridge.source.replication import ReplicationError
from cdc_bridge.source.setup import failover_wanted, outbox_problems, publication_plan
from cdc_bridge.source.standby_source import (
    create_slot_on_standby,
    primary_wal_lsn,
    require_standby,
    wait_until_replayed,
)
from cdc_bridge.source.tables import (
    current_role,
    partitioned_tables,
    publication_info,
    table_columns,
    table_identifier,
)

if TYPE_CHECKING:
    pass


Action = Literal["created", "exists", "would create", "problem"]


StepKind = Literal["table", "publication", "slot", "stream"]


DEFAULT_TABLE = "public.outbox"


_CREATE_DEFAULT_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS public\.outbox\b")


@dataclass(frozen=True, slots=True)
class InitStep:
    kind: StepKind
    name: str
    action: Action
    detail: str
    sql: str | None = None  # the statement run (or to run, or that would fix a problem)
    stream_config: dict[str, object] | None = None

    def document(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "detail": self.detail,
            "sql": self.sql,
            "stream_config": self.stream_config,
        }


def table_sql(table_name: str) -> str:
    """sql/outbox.sql, creating ``table_name`` instead of public.outbox."""
    text = resources.files("cdc_bridge").joinpath("sql/outbox.sql").read_text(encoding="utf-8")
    if table_name == DEFAULT_TABLE:
        return text
    identifier = table_identifier(table_name).as_string(None)
    return _CREATE_DEFAULT_TABLE.sub(f"CREATE TABLE IF NOT EXISTS {identifier}", text)


def publication_sql(
    name: str, tables: tuple[str, ...], operations: tuple[str, ...], *, via_root: bool = False
) -> str:
    """``via_root``: a table is partitioned (create_publication's rule)."""
    if not tables:  # message events only: pgoutput still needs a publication
        return sql.SQL("CREATE PUBLICATION {};").format(sql.Identifier(name)).as_string(None)
    table_list = sql.SQL(", ").join(table_identifier(t) for t in tables)
    root = ", publish_via_partition_root = true" if via_root else ""
    statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {}" + root + ");")
    return statement.format(
        sql.Identifier(name), table_list, sql.Literal(", ".join(operations))
    ).as_string(None)


def slot_sql(name: str, plugin: str, *, failover: bool = False) -> str:
    """What create_slot runs (``failover``: its arguments temporary, twophase, failover)."""
    arguments = ", false, false, true" if failover else ""
    statement = sql.SQL("SELECT pg_create_logical_replication_slot({}, {}" + arguments + ");")
    return statement.format(sql.Literal(name), sql.Literal(plugin)).as_string(None)


async def postgres_steps(
    config: BridgeConfig, dsn: str, dry_run: bool, guard: SlotGuard
) -> list[InitStep]:
    try:
        conn = await connect_postgres(
            dsn, config.postgres.connect_timeout, password=password_for(config, dsn)
        )
    except (psycopg.Error, OpsError) as exc:
        if not dry_run:
            raise
        return _unknown_postgres_steps(config, describe_error(exc))
    async with conn:
        if config.postgres.source != "standby":
            return await _steps(conn, conn, config, dry_run, guard)
        # As `run` does: a standby cannot write, so the outbox tables and the
        # publication are made on the primary, and only the slot on the standby.
        try:
            await require_standby(conn, config)
            primary = await connect_primary_for_ops(config)
        except FatalError as exc:
            raise OpsError(str(exc)) from None
        except (psycopg.Error, OpsError) as exc:
            if not dry_run:
                raise OpsError(f"postgres.primary_dsn: {describe_error(exc)}") from None
            return _unknown_postgres_steps(config, describe_error(exc))
        async with primary:
            return await _steps(conn, primary, config, dry_run, guard)


async def connect_primary_for_ops(config: BridgeConfig) -> AsyncConn:
    """postgres.source: standby: the primary (postgres.primary_dsn), where the outbox
    tables and the publication are made, with postgres.password_file's password as
    `run` uses it."""
    pg = config.postgres
    assert pg.primary_dsn is not None  # the config requires it with source: standby
    return await connect_postgres(pg.primary_dsn, pg.connect_timeout, password=pg.password)


async def _steps(
    conn: AsyncConn, primary: AsyncConn, config: BridgeConfig, dry_run: bool, guard: SlotGuard
) -> list[InitStep]:
    """``primary`` makes the tables and the publication; ``conn`` the slot (the same
    connection unless postgres.source is standby)."""
    pg = config.postgres
    standby = primary if primary is not conn else None
    plan: list[tuple[StepKind, str, Callable[[], Awaitable[list[InitStep]]]]] = [
        ("table", ", ".join(config.outbox.tables), lambda: _table_steps(primary, config, dry_run)),
        ("publication", pg.publication, lambda: _one(_publication_step(primary, config, dry_run))),
        ("slot", pg.slot, lambda: _one(_slot_step(conn, config, dry_run, guard, standby))),
    ]
    steps: list[InitStep] = []
    failed: set[StepKind] = set()
    # Every object gets its own line: one that cannot be made must not hide the
    # others, and one that depends on it says so instead of failing obscurely.
    for kind, name, make in plan:
        blocked = _blocked_by(kind, failed, config)
        if blocked is not None:
            steps.append(InitStep(kind, name, "problem", blocked))
            failed.add(kind)
            continue
        try:
            steps += await make()
        except psycopg.errors.InsufficientPrivilege as exc:
            where = conn if kind == "slot" else primary
            steps.append(await _denied_step(where, config, kind, name, exc))
            failed.add(kind)
        except (psycopg.Error, ReplicationError, nats.errors.Error, TimeoutError) as exc:
            # The fix `run` gives for the same refusal (wal_level: the ALTER SYSTEM line)
            fix = start_up_fix(exc, config)
            steps.append(InitStep(kind, name, "problem", describe_error(exc), fix))
            failed.add(kind)
    return steps


def _blocked_by(kind: StepKind, failed: set[StepKind], config: BridgeConfig) -> str | None:
    """Why ``kind`` must not be attempted after the ``failed`` ones, or None."""
    if kind == "publication" and "table" in failed and config.outbox.tables:
        return "not created: it needs the outbox tables, which could not be checked or created"
    if kind == "slot" and "publication" in failed and config.postgres.plugin == "pgoutput":
        return (
            "not created: a pgoutput slot must be created after its publication, which "
            "could not be checked or created (it could not decode the changes in between)"
        )
    return None


_ADMIN_FIX = "an administrator runs `cdc-bridge init --config FILE --dsn <admin DSN>` once"


async def _denied_step(
    conn: AsyncConn,
    config: BridgeConfig,
    kind: StepKind,
    name: str,
    exc: psycopg.errors.InsufficientPrivilege,
) -> InitStep:
    """A permission refused: what creating this object takes, and who can do it."""
    role = (await current_role(conn)).name
    database = await current_database(conn)
    why = describe_postgres_error(exc)
    pg = config.postgres
    if kind == "table":
        schemas = ", ".join(sorted({t.partition(".")[0] for t in config.outbox.tables}))
        needs = f"CREATE on schema {schemas} (or owning it)"
        statement = None  # sql/outbox.sql: too long for a fix line
    elif kind == "publication":
        tables = ", ".join(config.outbox.tables) or "no table"
        needs = f"CREATE on database {database} and ownership of {tables}"
        statement = publication_sql(pg.publication, *publication_plan(config))
    else:
        needs = "the REPLICATION attribute"
        try:
            failover = failover_wanted(config, conn.info.server_version)
        except FatalError:
            failover = False
        statement = slot_sql(pg.slot, pg.plugin, failover=failover)
    detail = (
        f"role {role} may not create it ({why}): it needs {needs}; {_ADMIN_FIX}, "
        "then the bridge runs as its role (docs/security.md)"
    )
    return InitStep(kind, name, "problem", detail, statement)


async def _one(step: Awaitable[InitStep]) -> list[InitStep]:
    return [await step]


def _unknown_postgres_steps(config: BridgeConfig, why: str) -> list[InitStep]:
    """A dry run that cannot look: everything, as it would be created."""
    unknown = f"could not look ({why}): shown as if missing"
    pg = config.postgres
    steps = [
        InitStep("table", t, "would create", unknown, table_sql(t)) for t in config.outbox.tables
    ]
    steps.append(
        InitStep(
            "publication",
            pg.publication,
            "would create",
            unknown,
            publication_sql(pg.publication, *publication_plan(config)),
        )
    )
    steps.append(InitStep("slot", pg.slot, "would create", unknown, slot_sql(pg.slot, pg.plugin)))
    return steps


async def _table_steps(conn: AsyncConn, config: BridgeConfig, dry_run: bool) -> list[InitStep]:
    steps: list[InitStep] = []
    for name in config.outbox.tables:
        if await table_columns(conn, name) is not None:
            steps.append(InitStep("table", name, "exists", "left as it is"))
            continue
        statement = table_sql(name)
        if dry_run:
            steps.append(InitStep("table", name, "would create", "from sql/outbox.sql", statement))
            continue
        await conn.execute(statement.encode())
        steps.append(InitStep("table", name, "created", "from sql/outbox.sql", statement))
    # Columns can only be checked once every table exists (in a dry run: already).
    if not any(step.action == "would create" for step in steps):
        for problem in await outbox_problems(conn, config):
            steps.append(
                InitStep(
                    "table",
                    ", ".join(config.outbox.tables),
                    "problem",
                    problem.problem,
                    problem.fix,
                )
            )
    return steps


async def _publication_step(conn: AsyncConn, config: BridgeConfig, dry_run: bool) -> InitStep:
    name = config.postgres.publication
    tables, operations = publication_plan(config)  # what the daemon needs (change tables too)
    publishes = ", ".join(operations)
    info = await publication_info(conn, name)
    if info is None:
        via_root = bool(await partitioned_tables(conn, tables))
        statement = publication_sql(name, tables, operations, via_root=via_root)
        detail = f"for {publishes} of {', '.join(tables)}" if tables else "for messages only"
        if dry_run:
            return InitStep("publication", name, "would create", detail, statement)
        await conn.execute(statement.encode())
        return InitStep("publication", name, "created", detail, statement)
    uncovered = [t for t in tables if t not in info.tables]
    if uncovered:
        fix = f"ALTER PUBLICATION {name} ADD TABLE {', '.join(uncovered)};"
        detail = f"exists but does not include {', '.join(uncovered)} (left unchanged)"
        return InitStep("publication", name, "problem", detail, fix)
    if tables and not set(operations) <= set(info.operations):
        fix = f"ALTER PUBLICATION {name} SET (publish = '{publishes}');"
        detail = f"exists but does not publish {publishes}"
        return InitStep("publication", name, "problem", detail, fix)
    detail = f"publishes {publishes} of {', '.join(tables)}" if tables else "for messages only"
    return InitStep("publication", name, "exists", detail)


async def _slot_step(
    conn: AsyncConn,
    config: BridgeConfig,
    dry_run: bool,
    guard: SlotGuard,
    primary: AsyncConn | None = None,
) -> InitStep:
    """``primary``: ``conn`` is a standby (postgres.source: standby), where the slot is
    made once it has replayed the publication, as `run` makes it."""
    name, plugin = config.postgres.slot, config.postgres.plugin
    slot = await get_slot(conn, name)
    if slot is None:
        refusal = await guard()
        if refusal is not None:
            return InitStep("slot", name, "problem", refusal, f"cdc-bridge slots create {name}")
        try:  # as `run` creates it: a failover slot where postgres.failover says so
            failover = failover_wanted(config, conn.info.server_version)
        except FatalError as exc:
            return InitStep("slot", name, "problem", str(exc))
        statement = slot_sql(name, plugin, failover=failover)
        kind = f"plugin {plugin}" + (", a failover slot" if failover else "")
        if dry_run:
            return InitStep("slot", name, "would create", kind, statement)
        if primary is None:
            await create_slot(conn, name, plugin, failover=failover)
        else:
            await wait_until_replayed(conn, await primary_wal_lsn(primary))
            await create_slot_on_standby(conn, primary, name, plugin)
        created = await get_slot(conn, name)
        start = lsn_text(created.confirmed_flush_lsn if created else None)
        failover_note = " (a failover slot)" if failover else ""
        if primary is not None:
            failover_note = f" on the standby {conn.info.host}:{conn.info.port}"
        detail = f"{plugin} at {start}{failover_note}: events committed from now on are streamed"
        return InitStep("slot", name, "created", detail, statement)
    if slot.plugin != plugin:
        detail = f"exists with plugin {slot.plugin}, the config says {plugin}"
        return InitStep("slot", name, "problem", detail, f"cdc-bridge slots drop {name}")
    database = await current_database(conn)
    if slot.database != database:
        detail = f"exists in database {slot.database}, the DSN connects to {database}"
        return InitStep("slot", name, "problem", detail)
    if slot.wal_status == "lost":
        detail = "exists but is LOST (wal_status = lost): events were lost"
        return InitStep("slot", name, "problem", detail, f"cdc-bridge slots drop {name}")
    detail = f"{plugin}, confirmed up to {lsn_text(slot.confirmed_flush_lsn)}"
    return InitStep("slot", name, "exists", detail)


# Why a missing slot must not be created now, or None.
SlotGuard = Callable[[], Awaitable[str | None]]
