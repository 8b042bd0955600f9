"""``cdc-bridge init``: create what is missing (outbox table, publication, slot, stream).

Idempotent: what exists is left exactly as it is, even when it differs from the config
(that is reported as a problem, with the statement that would fix it, never run).
Order matters: the publication before the slot, because pgoutput looks the
publication up as of each change and cannot decode changes from before it existed.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

import nats.errors
import psycopg
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from psycopg import sql

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.args import command_parser, json_flag
from cdc_bridge.cli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    OpsError,
    describe_error,
    describe_postgres_error,
    run_command,
)
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.nats_client import API_TIMEOUT, connect_quietly
from cdc_bridge.cli.render import dumps, lsn_text, table
from cdc_bridge.cli.target import connect_postgres, password_for, require_config
from cdc_bridge.config.model import BridgeConfig, NatsConfig
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.sink.connect import ensure_stream
from cdc_bridge.sink.coverage import check_stream_coverage
from cdc_bridge.sink.reconcile import read_stream_tail
from cdc_bridge.source.catalog import AsyncConn, create_slot, current_database, get_slot
from cdc_bridge.source.replication import ReplicationError, ReplicationStream
from cdc_bridge.source.setup import outbox_problems, publication_plan
from cdc_bridge.source.tables import (
    current_role,
    partitioned_tables,
    publication_info,
    table_columns,
    table_identifier,
)

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

Action = Literal["created", "exists", "would create", "problem"]
StepKind = Literal["table", "publication", "slot", "stream"]
_DEFAULT_TABLE = "public.outbox"
_MAX_LSN = (1 << 64) - 1
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
    if table_name == _DEFAULT_TABLE:
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


def slot_sql(name: str, plugin: str) -> str:
    statement = sql.SQL("SELECT pg_create_logical_replication_slot({}, {});")
    return statement.format(sql.Literal(name), sql.Literal(plugin)).as_string(None)


def stream_document(config: NatsConfig) -> dict[str, object]:
    """The stream as ``ensure_stream`` would create it."""
    stream = config.stream
    return {
        "name": stream.name,
        "subjects": list(stream.subjects),
        "storage": stream.storage,
        "num_replicas": stream.replicas,
        "duplicate_window_seconds": stream.duplicate_window,
        "max_age_seconds": stream.max_age,
    }


async def init_command(config: BridgeConfig, dsn: str, *, dry_run: bool, as_json: bool) -> int:
    # NATS first: a missing slot is only created once the stream is known to hold
    # nothing from an earlier slot of that name (see _dropped_slot_guard).
    try:
        nc: NatsClient | None = await connect_quietly(config)
        nats_problem = None
    except OpsError as exc:
        nc, nats_problem = None, str(exc)
    try:
        guard = _dropped_slot_guard(nc, config, dsn)
        steps = [
            *await _postgres_steps(config, dsn, dry_run, guard),
            *await _stream_steps(nc, nats_problem, config, dry_run),
        ]
    finally:
        if nc is not None:
            await nc.close()
    if as_json:
        print(dumps([step.document() for step in steps]))
    elif dry_run:
        print("\n".join(_dry_run_lines(steps)))
    else:
        print("\n".join(_lines(steps)))
    return EXIT_FAILED if any(step.action == "problem" for step in steps) else EXIT_OK


def _lines(steps: list[InitStep]) -> list[str]:
    rows = [[step.action, step.kind, step.name, step.detail] for step in steps]
    lines = table(["action", "kind", "name", "detail"], rows)
    lines += [f"  fix: {step.sql}" for step in steps if step.action == "problem" and step.sql]
    if all(step.action == "exists" for step in steps):
        lines.append("nothing to do: everything exists")
    return lines


def _dry_run_lines(steps: list[InitStep]) -> list[str]:
    lines = ["-- cdc-bridge init --dry-run: nothing was changed"]
    for step in steps:
        lines.append(f"-- {step.kind} {step.name}: {step.action}; {step.detail}")
        if step.action == "would create" and step.sql:
            lines.append(step.sql.rstrip())
        if step.action == "would create" and step.stream_config:
            lines.append(dumps(step.stream_config))
    return lines


# Why a missing slot must not be created now, or None.
SlotGuard = Callable[[], Awaitable[str | None]]


def _dropped_slot_guard(nc: NatsClient | None, config: BridgeConfig, dsn: str) -> SlotGuard:
    """The daemon's own rule: a missing slot whose events the stream already holds was
    dropped or lost, and recreating it silently would hide the gap. Creating it is then
    an explicit decision (`cdc-bridge slots create`)."""

    async def reason() -> str | None:
        if nc is None:
            return None  # NATS unreachable: nothing to compare with (reported separately)
        stream, slot = config.nats.stream.name, config.postgres.slot
        try:
            info = await nc.jsm(timeout=API_TIMEOUT).stream_info(stream)
        except NotFoundError:
            return None
        if info.state is None or not info.state.messages:
            return None
        replication = await ReplicationStream.connect(
            dsn,
            connect_timeout=config.postgres.connect_timeout,
            password=password_for(config, dsn),
        )
        try:
            source = f"{replication.system_id}/{slot}"  # the Cdc-Source header of its events
        finally:
            await replication.close()
        tail = await read_stream_tail(nc.jetstream(), stream, source, _MAX_LSN, 1)
        if tail.newest is None:
            return None
        return (
            f"missing, but stream {stream} holds its events up to LSN "
            f"{format_lsn(tail.newest[0])}: the slot was dropped or lost, and events "
            "committed since may never have been published. Reconcile, then accept the "
            f"loss with `cdc-bridge slots create {slot}` (docs/operating.md, 'slot lost')"
        )

    return reason


async def _postgres_steps(
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
    pg = config.postgres
    plan: list[tuple[StepKind, str, Callable[[], Awaitable[list[InitStep]]]]] = [
        ("table", ", ".join(config.outbox.tables), lambda: _table_steps(conn, config, dry_run)),
        ("publication", pg.publication, lambda: _one(_publication_step(conn, config, dry_run))),
        ("slot", pg.slot, lambda: _one(_slot_step(conn, config, dry_run, guard))),
    ]
    steps: list[InitStep] = []
    failed: set[StepKind] = set()
    async with conn:
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
                steps.append(await _denied_step(conn, config, kind, name, exc))
                failed.add(kind)
            except (psycopg.Error, ReplicationError, nats.errors.Error, TimeoutError) as exc:
                steps.append(InitStep(kind, name, "problem", describe_error(exc)))
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
        statement = slot_sql(pg.slot, pg.plugin)
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
    conn: AsyncConn, config: BridgeConfig, dry_run: bool, guard: SlotGuard
) -> InitStep:
    name, plugin = config.postgres.slot, config.postgres.plugin
    slot = await get_slot(conn, name)
    if slot is None:
        refusal = await guard()
        if refusal is not None:
            return InitStep("slot", name, "problem", refusal, f"cdc-bridge slots create {name}")
        statement = slot_sql(name, plugin)
        if dry_run:
            return InitStep("slot", name, "would create", f"plugin {plugin}", statement)
        await create_slot(conn, name, plugin)
        created = await get_slot(conn, name)
        start = lsn_text(created.confirmed_flush_lsn if created else None)
        detail = f"{plugin} at {start}: events committed from now on are streamed"
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


async def _stream_steps(
    nc: NatsClient | None, nats_problem: str | None, config: BridgeConfig, dry_run: bool
) -> list[InitStep]:
    wanted = config.nats.stream
    if nc is None:
        if not dry_run:
            return [InitStep("stream", wanted.name, "problem", nats_problem or "no NATS")]
        unknown = f"could not look ({nats_problem}): shown as if missing"
        document = stream_document(config.nats)
        return [InitStep("stream", wanted.name, "would create", unknown, None, document)]
    try:
        return await _stream_steps_connected(nc, config, dry_run)
    except (nats.errors.Error, TimeoutError) as exc:
        return [InitStep("stream", wanted.name, "problem", describe_error(exc))]


async def _stream_steps_connected(
    nc: NatsClient, config: BridgeConfig, dry_run: bool
) -> list[InitStep]:
    wanted = config.nats.stream
    try:
        info = await nc.jsm(timeout=API_TIMEOUT).stream_info(wanted.name)
    except NotFoundError:
        info = None
    if info is None:
        detail = f"subjects {', '.join(wanted.subjects)}"
        document = stream_document(config.nats)
        if dry_run:
            return [InitStep("stream", wanted.name, "would create", detail, None, document)]
        await ensure_stream(nc, config.nats)
        step = InitStep("stream", wanted.name, "created", detail, None, document)
    else:
        live = tuple(info.config.subjects or ())
        detail = f"stores {', '.join(live)}"
        if set(live) != set(wanted.subjects):
            detail += f" (nats.stream.subjects says {', '.join(wanted.subjects)}; left as it is)"
        step = InitStep("stream", wanted.name, "exists", detail)
    return [step, *await _coverage_steps(nc, config)]


async def _coverage_steps(nc: NatsClient, config: BridgeConfig) -> list[InitStep]:
    problems = await check_stream_coverage(nc, config, timeout=API_TIMEOUT)
    name = config.nats.stream.name
    return [InitStep("stream", name, "problem", problem) for problem in problems]


def _init(args: argparse.Namespace) -> int:

    async def main() -> int:
        config = require_config(args.config)
        dsn = args.dsn or config.postgres.dsn
        return await init_command(config, dsn, dry_run=args.dry_run, as_json=args.json)

    return run_command(main)


def register(commands: Subcommands, name: str, summary: str) -> None:
    init = command_parser(
        commands,
        name,
        summary,
        "Create the outbox table (sql/outbox.sql), the publication, the slot and the "
        "stream when missing; leave what exists alone (differences are reported as "
        "problems, exit 1). Running it twice changes nothing the second time. --dry-run "
        "prints the SQL and the stream config instead.\n--json: an array of objects with "
        f"keys {key_list(json_keys.STEP_KEYS)}.",
        "  cdc-bridge init --config config.yaml --dry-run\n  cdc-bridge init --config config.yaml",
    )
    init.add_argument(
        "--config", required=True, metavar="FILE", help="the bridge's YAML config file"
    )
    init.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    init.add_argument("--dry-run", action="store_true", help="change nothing; print the plan")
    json_flag(init)
    init.set_defaults(handler=_init)


