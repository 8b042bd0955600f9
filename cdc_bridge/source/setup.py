"""Getting PostgreSQL ready: outbox tables, change tables, publication and slot.

The daemon runs this before every session; `cdc-bridge check` and `init` reuse its
read-only parts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import TupleRow

from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.templates import ACTION_PSEUDO_COLUMN
from cdc_bridge.routing.change_events import TypeNames
from cdc_bridge.source.catalog import (
    FAILOVER_SLOTS_SINCE,
    AsyncConn,
    SlotInfo,
    create_slot,
    get_slot,
    wal_head_lsn,
)
from cdc_bridge.source.plugins import envelope_columns
from cdc_bridge.source.replication import connection_string
from cdc_bridge.source.tables import (
    column_type_names,
    create_publication,
    partitioned_tables,
    publication_exists,
    publication_info,
    publication_tables,
    publication_via_root,
    replica_identity,
    table_column_types,
    table_columns,
)

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.source.setup")


@dataclass(frozen=True, slots=True)
class OutboxProblem:
    """Something about the outbox or change tables that stops the bridge, with its fix."""

    key: str  # the config key it is about
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.key}: {self.problem} (fix: {self.fix})"


async def outbox_problems(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig
) -> list[OutboxProblem]:
    """Read-only: missing tables, change tables that cannot identify rows, and columns
    the routes or the outbox section need but no table has. Empty when all is well."""
    outbox = config.outbox
    # Message events are rows of the envelope's columns (messages.py).
    known_columns = set(envelope_columns(config).names()) if outbox.message_prefixes else set()
    problems: list[OutboxProblem] = []
    for table in outbox.tables:
        columns = await table_columns(conn, table)
        if columns is None:
            problems.append(
                OutboxProblem(
                    "outbox.table",
                    f"table {table} does not exist",
                    "cdc-bridge init (creates it from sql/outbox.sql)",
                )
            )
        else:
            known_columns.update(columns)
    known_columns.update(await check_change_tables(conn, config, problems))
    if problems:
        return problems  # the columns cannot be judged while tables are missing
    needed = config.template_columns()
    if outbox.headers_column is not None and outbox.tables:
        needed.add(outbox.headers_column)
    described = ", ".join((*outbox.tables, *outbox.change_tables)) or "the message envelope"
    for column in sorted(needed - known_columns - {"table"}):
        problems.append(
            OutboxProblem(
                "routes",
                f"column {column!r} is used by the config but is not a column of "
                f"{described} (columns: {', '.join(sorted(known_columns))})",
                f"add the column, or change the routes/outbox section that names {column!r}",
            )
        )
    if not problems:
        problems.extend(await partition_problems(conn, config))
        problems.extend(await json_path_problems(conn, config))
    return problems


async def partition_problems(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig
) -> list[OutboxProblem]:
    """wal2json cannot stream a partitioned table: it reads no publication, names each
    change after the partition it went to, and filters add-tables by that name, so the
    rows of a partition attached later would be skipped without a word."""
    if config.postgres.plugin != "wal2json":
        return []
    outbox = config.outbox
    partitioned = await partitioned_tables(conn, (*outbox.tables, *outbox.change_tables))
    return [
        OutboxProblem(
            "postgres.plugin",
            f"{table} is a partitioned table, and wal2json names each change after its "
            "partition and cannot cover partitions attached later",
            "use plugin pgoutput (the publication then publishes via the partition root)",
        )
        for table in partitioned
    ]


_JSON_TYPES = frozenset(("json", "jsonb"))


async def json_path_problems(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig
) -> list[OutboxProblem]:
    """A path (``{payload.customer.region}``) must read a json or jsonb column in every
    table that has the column; a logical message's envelope holds JSON only in its
    payload and headers."""
    paths = config.json_paths()
    if not paths:
        return []
    outbox = config.outbox
    types: dict[str, dict[str, str]] = {}
    for table in (*outbox.tables, *outbox.change_tables):
        types[table] = await table_column_types(conn, table)
    if outbox.message_prefixes:
        envelope = envelope_columns(config)
        json_columns = {envelope.payload, envelope.headers}
        types["logical messages"] = {
            name: "json" if name in json_columns else "text" for name in envelope.names()
        }
    problems = []
    for column, (key, path) in sorted(paths.items()):
        for table, columns in types.items():
            type_name = columns.get(column)
            if type_name is None or type_name in _JSON_TYPES:
                continue
            problems.append(
                OutboxProblem(
                    key,
                    f"{{{path}}} reads inside column {column!r} of {table}, which is "
                    f"{type_name}, not json or jsonb",
                    f"make it jsonb (ALTER TABLE {table} ALTER COLUMN {column} TYPE jsonb "
                    f"USING {column}::jsonb), or route on a column instead of a path",
                )
                if table != "logical messages"
                else OutboxProblem(
                    key,
                    f"{{{path}}} reads inside the envelope's {column!r}, which is text, "
                    "not JSON (only the payload and headers of a logical message are)",
                    f"route on {column!r} itself",
                )
            )
            break
    return problems


async def prepare_outbox(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig, *, slot_exists: bool = False
) -> None:
    """Check the outbox tables and the routes' columns; create the publication if missing
    (for pgoutput, only while the slot is new: see ``publication_dropped``)."""
    pg = config.postgres
    problems = await outbox_problems(conn, config)
    if problems:
        raise FatalError(problems[0].line())
    tables, operations = publication_plan(config)
    # The publication must exist before the slot: pgoutput looks it up as of each
    # change's position, and fails on changes from before it existed.
    if not await publication_exists(conn, pg.publication):
        if slot_exists and pg.plugin == "pgoutput":
            raise FatalError(publication_dropped(pg.publication, pg.slot))
        try:
            if tables:
                await create_publication(conn, pg.publication, tables, operations)
            else:  # messages only: pgoutput still needs a publication, one without tables
                await conn.execute(
                    sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(pg.publication))
                )
        except psycopg.errors.InsufficientPrivilege as exc:
            # The least-privilege role (sql/role.sql) may not: an admin makes it once.
            raise FatalError(
                f"postgres.publication: publication {pg.publication} does not exist, and "
                f"role {conn.info.user} may not create it ({exc.diag.message_primary}); "
                "an administrator creates it once: cdc-bridge init --config <this file> "
                "--dsn <an admin's DSN>"
            ) from None
        log.info("publication_created", publication=pg.publication, tables=list(tables))
        return
    problem = await publication_problem(conn, config)
    if problem is not None:
        raise FatalError(problem)


# What brings back the rows a gap left out, once the cause is fixed: the bridge delivers
# what the slot still has, then (the order guard needs it stopped) the audit finds what
# the stream lacks and the replay publishes it (Cdc-Replay: true).
REPAIR_AFTER_A_GAP = (
    "start the bridge until it has caught up, stop it, run `cdc-bridge audit --config "
    "<this file>` and `cdc-bridge outbox replay --config <this file> --missing --yes`, "
    "and start it again"
)


def publication_dropped(publication: str, slot: str) -> str:
    """A pgoutput slot whose publication is gone: pgoutput skipped (or will skip) every
    row committed while it was missing, saying so only in PostgreSQL's own log."""
    return (
        f"postgres.publication: publication {publication} does not exist, but slot {slot} "
        "does: it was dropped, and PostgreSQL skips the rows committed while it is missing "
        "(they are not in the stream). Repair: create it again (cdc-bridge init --config "
        f"<this file> --dsn <an admin's DSN>); then {REPAIR_AFTER_A_GAP}"
    )


async def publication_problem(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig
) -> str | None:
    """Why the existing publication would not deliver every event, or None: a table
    not in it, a partitioned table not published via its root, missing operations."""
    fault = await publication_fault(conn, config)
    return None if fault is None else fault.line()


async def publication_fault(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig
) -> OutboxProblem | None:
    """publication_problem as its parts (``cdc-bridge check`` shows the fix apart)."""
    pg = config.postgres
    tables, operations = publication_plan(config)
    partitioned = await partitioned_tables(conn, tables)
    if partitioned and not await publication_via_root(conn, pg.publication):
        return via_root_problem(pg.publication, partitioned[0])
    covered = await publication_tables(conn, pg.publication)
    uncovered = [t for t in tables if t not in covered]
    if uncovered:
        return OutboxProblem(
            "postgres.publication",
            f"publication {pg.publication} does not include {', '.join(uncovered)}; its "
            "events would never arrive",
            f"ALTER PUBLICATION {pg.publication} ADD TABLE {', '.join(uncovered)}",
        )
    info = await publication_info(conn, pg.publication)
    if info is not None and not set(operations) <= set(info.operations):
        return OutboxProblem(
            "postgres.publication",
            f"publication {pg.publication} publishes only "
            f"{', '.join(info.operations) or 'nothing'}; "
            + (
                "change events need updates and deletes"
                if "update" in operations
                else "outbox events need inserts"
            ),
            f"ALTER PUBLICATION {pg.publication} SET (publish = '{', '.join(operations)}')",
        )
    return None


def via_root_problem(publication: str, table: str) -> OutboxProblem:
    return OutboxProblem(
        "postgres.publication",
        f"{table} is partitioned, and publication {publication} does not publish via the "
        "partition root: its events would arrive named as its partitions",
        f"ALTER PUBLICATION {publication} SET (publish_via_partition_root = true)",
    )


def publication_plan(config: BridgeConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tables the publication must include, and the operations it must publish.

    Change tables are published in the bridge's one publication, with updates and
    deletes for all of its tables: a second publication would be safe only if it existed
    before the slot's position (pgoutput fails on any change from before a publication
    in publication_names was created), which adding change tables to a running bridge
    cannot ensure. The outbox tables' updates and deletes then arrive too; the decoder
    skips them. wal2json reads no publication: its tables are in add-tables instead.
    """
    outbox = config.outbox
    if config.postgres.plugin == "pgoutput" and outbox.change_tables:
        return (*outbox.tables, *outbox.change_tables), ("insert", "update", "delete")
    return outbox.tables, ("insert",)


async def check_change_tables(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig, problems: list[OutboxProblem]
) -> set[str]:
    """Check that the change tables exist and can identify updated and deleted rows
    (adding to ``problems``); their columns (and ``action``), for checking the routes."""
    outbox = config.outbox
    if not outbox.change_tables:
        return set()
    known_columns = {ACTION_PSEUDO_COLUMN}
    pgoutput = config.postgres.plugin == "pgoutput"
    # With pgoutput the outbox tables' updates and deletes are published too (see
    # publication_plan): PostgreSQL then refuses them on a table without an identity.
    checked = [*outbox.change_tables, *(outbox.tables if pgoutput else ())]
    for table in checked:
        key = "outbox.change_tables" if table in outbox.change_tables else "outbox.table"
        identity = await replica_identity(conn, table)
        if identity is None:
            problems.append(OutboxProblem(key, f"table {table} does not exist", "create it"))
            continue
        if table in outbox.change_tables:
            known_columns.update(await table_columns(conn, table) or ())
        if identity.identifies_rows:
            continue
        how = f"REPLICA IDENTITY {identity.setting.upper()}" + (
            " without a primary key" if identity.setting == "default" else ""
        )
        fix = f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL"
        if pgoutput:
            problems.append(
                OutboxProblem(
                    key,
                    f"{table} has no replica identity ({how}): once the publication "
                    "publishes updates and deletes, PostgreSQL refuses UPDATE and DELETE on it",
                    fix,
                )
            )
            continue
        log.warning(
            "change_table_without_identity",
            table=table,
            error=f"{how}: wal2json skips its updates and deletes, only inserts become "
            f"change events (fix: {fix})",
        )
    return known_columns


async def connect_source(config: BridgeConfig) -> psycopg.AsyncConnection[TupleRow]:
    """An autocommit connection to ``postgres.dsn`` (its connect timeout and password):
    what the session's set-up, its watches, the continuous audit and slot recovery open."""
    pg = config.postgres
    return await psycopg.AsyncConnection.connect(
        connection_string(pg.dsn, pg.connect_timeout), autocommit=True, password=pg.password
    )


async def prepare_postgres(
    config: BridgeConfig, *, may_create_slot: Callable[[], Awaitable[None]] | None = None
) -> tuple[SlotInfo, int, str, TypeNames | None]:
    """Outbox, publication and slot ready: the slot, the server's WAL head, its version,
    and for pgoutput the names of the change tables' column types (None without any).

    ``may_create_slot`` runs before a missing slot is created and may refuse by raising.
    """
    pg = config.postgres
    async with await connect_source(config) as conn:
        if pg.source == "standby":
            return await _prepare_on_standby(conn, config, may_create_slot)
        failover = failover_wanted(config, conn.info.server_version)
        slot = await get_slot(conn, pg.slot)
        await prepare_outbox(conn, config, slot_exists=_streams_from(slot, pg.plugin))
        if slot is None:
            if may_create_slot is not None:
                await may_create_slot()
            await create_slot(conn, pg.slot, pg.plugin, failover=failover)
        return await _slot_ready(conn, config, slot)


def _streams_from(slot: SlotInfo | None, plugin: str) -> bool:
    """The slot exists and is this bridge's to stream from (one of another plugin gets
    its own fatal line from check_slot)."""
    return slot is not None and slot.plugin == plugin


async def _prepare_on_standby(
    conn: AsyncConn, config: BridgeConfig, may_create_slot: Callable[[], Awaitable[None]] | None
) -> tuple[SlotInfo, int, str, TypeNames | None]:
    """postgres.source: standby: the publication on the primary, the slot on the standby."""
    from cdc_bridge.source.standby_source import (  # only a standby source needs it
        connect_primary,
        create_slot_on_standby,
        primary_wal_lsn,
        require_standby,
        wait_until_replayed,
    )

    pg = config.postgres
    await require_standby(conn, config)
    async with await connect_primary(config) as primary:
        slot = await get_slot(conn, pg.slot)
        await prepare_outbox(primary, config, slot_exists=_streams_from(slot, pg.plugin))
        await wait_until_replayed(conn, await primary_wal_lsn(primary))
        slot = await get_slot(conn, pg.slot)
        if slot is None:
            if may_create_slot is not None:
                await may_create_slot()
            await create_slot_on_standby(conn, primary, pg.slot, pg.plugin)
    return await _slot_ready(conn, config, slot)


async def _slot_ready(
    conn: AsyncConn, config: BridgeConfig, found: SlotInfo | None
) -> tuple[SlotInfo, int, str, TypeNames | None]:
    """The slot as it is now (created just now when ``found`` is None), checked."""
    pg = config.postgres
    slot = found
    if slot is None:
        slot = await get_slot(conn, pg.slot)
        assert slot is not None
        log.info(
            "slot_created",
            slot=pg.slot,
            lsn=format_lsn(slot.confirmed_flush_lsn or 0),
            detail="new slot: only events committed from now on are streamed",
        )
    check_slot(config, slot, str(conn.info.dbname))
    names = None
    if pg.plugin == "pgoutput" and config.outbox.change_tables:
        names = TypeNames(await column_type_names(conn, config.outbox.change_tables))
    wal_head = await wal_head_lsn(conn)
    return slot, wal_head, server_version(conn.info.server_version), names


def failover_wanted(config: BridgeConfig, server_version_num: int) -> bool:
    """Whether the slot is to be a failover slot (postgres.failover on this server).

    Every command that creates the bridge's slot asks this (`run`, `init`, `slots
    create`). A slot made on a standby (postgres.source: standby) cannot be one."""
    setting = config.postgres.failover
    if config.postgres.source == "standby":
        return False  # and failover: true with a standby source is a config error
    supported = server_version_num >= FAILOVER_SLOTS_SINCE
    if setting is True and not supported:
        raise FatalError(
            "postgres.failover: true needs PostgreSQL 17 or later (failover slots), the "
            f"server is {server_version(server_version_num)} (fix: set postgres.failover to "
            "auto or false, and see docs/production.md#high-availability for older servers)"
        )
    return supported and setting is not False


def server_version(number: int) -> str:
    """libpq's 150004 -> "15.4"."""
    return f"{number // 10000}.{number % 10000}"


def check_slot(config: BridgeConfig, slot: SlotInfo, dbname: str) -> None:
    name = slot.name
    if slot.plugin != config.postgres.plugin:
        raise FatalError(
            f"postgres.slot: slot {name} uses plugin {slot.plugin}, the config says "
            f"{config.postgres.plugin} (drop and recreate it: `cdc-bridge slots drop {name}`)"
        )
    if slot.database != dbname:
        raise FatalError(
            f"postgres.slot: slot {name} belongs to database {slot.database}, the DSN "
            f"connects to {dbname} (fix: point postgres.dsn at database {slot.database}, "
            "or give this database's bridge its own postgres.slot)"
        )
    if slot.wal_status == "lost":
        raise FatalError(
            f"slot {name} is invalidated (wal_status = lost): PostgreSQL removed WAL it "
            "still needed, so events were lost. Recreate it (`cdc-bridge slots drop "
            f"{name}`, then start the bridge), then `cdc-bridge audit` and `cdc-bridge outbox "
            "replay --missing` (or set postgres.on_slot_lost: recover)"
        )
