"""``cdc-bridge outbox prune``: delete outbox rows older than an age, in batches.

Safe while the bridge runs: the bridge reads events from the WAL, never from the table,
and its publication carries inserts only, so these deletes are not events. A row that
the bridge has not published yet (it is down, or behind) is still safe to delete: its
insert stays in the WAL the slot holds until the bridge has confirmed it.

Each batch is its own short transaction (the connection is in autocommit mode), so
locks, WAL bursts and the work lost to an interruption stay small; running it again
carries on. The cutoff is taken once, from the server's clock, at the start: rows
written while the job runs are never its business, so it always ends.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.args import json_flag
from cdc_bridge.cli.errors import EXIT_OK, OpsError, run_command
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.target import connect_postgres, password_for
from cdc_bridge.config.load import load_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.durations import DurationError, parse_duration
from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.tables import table_columns, table_identifier

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands
from cdc_bridge.cli.errors import describe_postgres_error
from cdc_bridge.cli.render import dumps

AGE_COLUMN = "created_at"  # sql/outbox.sql's; the age of a row is its insert time
DEFAULT_BATCH_SIZE = 10_000
_DAYS = re.compile(r"(\d+(?:\.\d+)?|\.\d+)d")
_SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class PruneResult:
    table: str
    rows: int  # deleted, or that would be deleted (dry run)
    batches: int  # DELETE statements run; 0 in a dry run


def parse_age(text: str) -> float:
    """``7d`` -> 604800.0; also ``12h``, ``30m``, ``1d12h``. A unit is required: a bare
    ``7`` would be seven seconds, and deleting all but the last seconds is not a typo
    this command should act on."""
    stripped = text.strip()
    days = _DAYS.match(stripped)
    rest = stripped[days.end() :] if days else stripped
    if not stripped or re.fullmatch(r"[\d.]+", rest):
        raise ValueError(f"not an age: {text!r} (give a unit: 7d, 12h, 30m, 1d12h)")
    try:
        seconds = parse_duration(rest) if rest else 0.0
    except DurationError:
        raise ValueError(f"not an age: {text!r} (give a unit: 7d, 12h, 30m, 1d12h)") from None
    return (float(days.group(1)) * _SECONDS_PER_DAY if days else 0.0) + seconds


async def prune_command(
    config: BridgeConfig,
    dsn: str,
    *,
    older_than: float,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Prune every table of ``config.outbox.tables``; print one line per table, or
    one JSON object with json_keys.PRUNE_KEYS."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tables = config.outbox.tables
    if not tables:
        if as_json:
            out(dumps(prune_document(None, dry_run, [])))
        else:
            out("nothing to prune: the config names no outbox table (messages store no rows)")
        return EXIT_OK
    conn = await connect_postgres(
        dsn, config.postgres.connect_timeout, password=password_for(config, dsn)
    )
    async with conn:
        for table in tables:  # all of them checked before anything is deleted
            await _check_table(conn, table, dry_run)
        cutoff = await _cutoff(conn, older_than)
        results: list[PruneResult] = []
        for table in tables:
            try:
                if dry_run:
                    result = PruneResult(table, await _count_older(conn, table, cutoff), 0)
                else:
                    result = await prune_table(conn, table, cutoff, batch_size)
            except psycopg.errors.InsufficientPrivilege as exc:  # e.g. revoked meanwhile
                raise OpsError(await _denied(conn, table, dry_run, exc)) from None
            results.append(result)
            if not as_json:
                out(_result_line(result, cutoff, dry_run))
    if as_json:
        out(dumps(prune_document(cutoff, dry_run, results)))
    elif len(results) > 1:
        verb = "would delete" if dry_run else "deleted"
        out(f"total: {verb} {_plural(sum(r.rows for r in results), 'row', 'rows')}")
    return EXIT_OK


def prune_document(
    cutoff: datetime | None, dry_run: bool, results: list[PruneResult]
) -> dict[str, object]:
    """`outbox prune --json`: exactly json_keys.PRUNE_KEYS (tables: PRUNE_TABLE_KEYS)."""
    return {
        "cutoff": None if cutoff is None else cutoff.isoformat(),
        "dry_run": dry_run,
        "tables": [{"table": r.table, "rows": r.rows, "batches": r.batches} for r in results],
        "total_rows": sum(r.rows for r in results),
    }


def _result_line(result: PruneResult, cutoff: datetime, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    batches = "" if dry_run else f" in {_plural(result.batches, 'batch', 'batches')}"
    return (
        f"{result.table}: {verb} {_plural(result.rows, 'row', 'rows')} created before "
        f"{cutoff.isoformat()}{batches}"
    )


async def prune_table(
    conn: AsyncConn, table: str, cutoff: datetime, batch_size: int
) -> PruneResult:
    """Delete the table's rows created before ``cutoff``, ``batch_size`` per statement."""
    # By ctid, so a table without a primary key works too; SKIP LOCKED, so a row some
    # other session holds (nothing of ours ever does) is left for the next run rather
    # than stalling the job.
    delete = sql.SQL(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM {table} WHERE {age} < %(cutoff)s LIMIT %(limit)s"
        " FOR UPDATE SKIP LOCKED))"
    ).format(table=table_identifier(table), age=sql.Identifier(AGE_COLUMN))
    deleted = batches = 0
    while True:
        cursor = await conn.execute(delete, {"cutoff": cutoff, "limit": batch_size})
        batches += 1
        deleted += cursor.rowcount
        if cursor.rowcount < batch_size:
            return PruneResult(table, deleted, batches)


async def _check_table(conn: AsyncConn, table: str, dry_run: bool) -> None:
    columns = await table_columns(conn, table)
    if columns is None:
        raise OpsError(f"table {table} does not exist (outbox.table in the config)")
    if AGE_COLUMN not in columns:
        raise OpsError(
            f"table {table} has no {AGE_COLUMN} column: prune deletes by it "
            f"(add `{AGE_COLUMN} timestamptz NOT NULL DEFAULT now()`, as in sql/outbox.sql)"
        )
    missing = await _missing_privileges(conn, table, dry_run)
    if missing:
        raise OpsError(_denied_line(await _role(conn), table, missing, dry_run))


def _needed(dry_run: bool) -> tuple[str, ...]:
    # Deleting by created_at reads it (SELECT), and PostgreSQL's FOR UPDATE (how a
    # batch skips rows other sessions hold) takes UPDATE, even in a DELETE's subquery.
    return ("SELECT",) if dry_run else ("SELECT", "UPDATE", "DELETE")


async def _missing_privileges(conn: AsyncConn, table: str, dry_run: bool) -> list[str]:
    qualified = table_identifier(table).as_string(conn)
    missing = []
    for privilege in _needed(dry_run):
        cursor = await conn.execute("SELECT has_table_privilege(%s, %s)", (qualified, privilege))
        row = await cursor.fetchone()
        if not (row and row[0]):
            missing.append(privilege)
    return missing


async def _role(conn: AsyncConn) -> str:
    cursor = await conn.execute("SELECT current_user")
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


def _denied_line(role: str, table: str, missing: list[str], dry_run: bool) -> str:
    """One line: the privilege missing, and the two ways to get it."""
    what = ", ".join(missing)
    grant = ", ".join(_needed(dry_run))
    return (
        f"role {role} may not {'read' if missing == ['SELECT'] else 'delete from'} {table}: "
        f"prune needs {what} on it (the bridge's own role, sql/role.sql, has SELECT only). "
        f"Run it with --dsn as a role that may (e.g. the table's owner), or "
        f"GRANT {grant} ON {table} TO <a housekeeping role>"
    )


async def _denied(
    conn: AsyncConn, table: str, dry_run: bool, exc: psycopg.errors.InsufficientPrivilege
) -> str:
    missing = await _missing_privileges(conn, table, dry_run) or [describe_postgres_error(exc)]
    return _denied_line(await _role(conn), table, missing, dry_run)


async def _cutoff(conn: AsyncConn, older_than: float) -> datetime:
    cursor = await conn.execute("SELECT now() - make_interval(secs => %s)", (older_than,))
    row = await cursor.fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


async def _count_older(conn: AsyncConn, table: str, cutoff: datetime) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE {} < %s").format(
        table_identifier(table), sql.Identifier(AGE_COLUMN)
    )
    cursor = await conn.execute(query, (cutoff,))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


# --- the command line ----------------------------------------------------------------------


def _prune(args: argparse.Namespace) -> int:

    async def main() -> int:
        config = load_config(args.config)
        return await prune_command(
            config,
            args.dsn or config.postgres.dsn,
            older_than=args.older_than,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            as_json=args.json,
        )

    return run_command(main)


def age_argument(text: str) -> float:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def batch_size_argument(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def register(commands: Subcommands, name: str, summary: str) -> None:
    outbox = commands.add_parser(name, help=summary)
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    prune = outbox_commands.add_parser(
        "prune",
        help="delete outbox rows older than an age, in batches",
        description="Delete rows of the config's outbox tables whose created_at is older\n"
        "than --older-than, --batch-size rows per transaction, and print how many.\n"
        "Safe while the bridge runs: it reads events from the WAL, and deletes are\n"
        "not events.\n\nNeeds SELECT, UPDATE and DELETE on the tables (--dry-run: SELECT):\n"
        "the bridge's own role (sql/role.sql) may not delete, so give --dsn a role that may.\n"
        f"--json: one object with keys {key_list(json_keys.PRUNE_KEYS)}; each of\n"
        f"tables has {key_list(json_keys.PRUNE_TABLE_KEYS)}.\n\n"
        "Exit codes: 0 ok, 1 failed, 2 usage error.",
        epilog="examples:\n  cdc-bridge outbox prune --config config.yaml --older-than 7d "
        "--dry-run\n  cdc-bridge outbox prune --config config.yaml --older-than 36h "
        "--batch-size 5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prune.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    prune.add_argument(
        "--dsn", metavar="DSN", help="override the config's postgres.dsn (a role that may delete)"
    )
    prune.add_argument(
        "--older-than", required=True, type=age_argument, metavar="AGE", help="e.g. 7d, 12h, 1d12h"
    )
    prune.add_argument(
        "--batch-size",
        type=batch_size_argument,
        default=10_000,
        metavar="N",
        help="rows deleted per transaction (default 10000)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would go")
    json_flag(prune)
    prune.set_defaults(handler=_prune)
    from cdc_bridge.cli.outbox_replay import register_replay

    register_replay(outbox_commands)
