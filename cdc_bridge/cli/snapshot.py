"""``cdc-bridge snapshot``: a change table's current rows as ``R`` (read) change events.

The command writes, it does not publish: chunk by chunk, in key order, each chunk in a
transaction that locks its rows (``FOR SHARE``) and writes each row into the WAL as a
transactional logical decoding message (source/snapshot.py, core/snapshots.py). The
bridge streaming the slot turns them into ``R`` events at the chunk's commit position,
routed like the table's other changes, with a deterministic Nats-Msg-Id. So it runs
beside a running bridge and never takes the slot.

Progress lives in ``outbox.snapshot_table``, written in each chunk's transaction: a run
stopped anyhow (Ctrl-C, SIGTERM, kill -9, a lost connection) resumes after the last
chunk it committed, and with the same snapshot id nothing is published twice. One
snapshot of a table at a time: a session advisory lock per table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg

from cdc_bridge.cli.args import command_parser, json_flag, positive_argument
from cdc_bridge.cli.errors import EXIT_FAILED, EXIT_OK, OpsError, describe_postgres_error
from cdc_bridge.cli.json_keys import SNAPSHOT_KEYS, key_list
from cdc_bridge.cli.render import count_of, dumps, key_values
from cdc_bridge.cli.target import connect_postgres, password_for
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.snapshots import valid_snapshot_id
from cdc_bridge.source import snapshot as sql_snapshot
from cdc_bridge.source.catalog import AsyncConn, get_slot
from cdc_bridge.source.snapshot import Progress, TableShape

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

PLAIN_PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is no terminal
TTY_PROGRESS_EVERY = 0.5
_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True, slots=True)
class Request:
    table: str  # schema.table
    where: str | None
    chunk: int | None  # None: the default (or the resumed snapshot's)
    snapshot_id: str | None
    dry_run: bool = False
    yes: bool = False
    as_json: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    snapshot_id: str
    table: str
    where: str | None
    chunk: int
    estimated_rows: int  # rows still to write, counted now
    resumed: Progress | None  # the unfinished snapshot this run continues
    create_progress_table: bool


# --- pure parts ------------------------------------------------------------------------


def qualified(table: str) -> str:
    """``orders`` -> ``public.orders``, as the config spells its tables."""
    return table if "." in table else f"public.{table}"


def new_snapshot_id(table: str, now: datetime) -> str:
    """``<table>-<UTC yyyymmddThhmmssZ>``: the table's name without schema, any
    character a Nats-Msg-Id should not carry replaced by ``_``."""
    name = "".join(ch if ch in _ID_CHARACTERS else "_" for ch in table.partition(".")[2])
    return f"{name[:47]}-{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def choose_snapshot(
    request: Request, snapshots: list[Progress], now: datetime
) -> tuple[str, Progress | None]:
    """The snapshot id this run writes under, and the progress it resumes (None: new).

    --id names one (resumed when it is unfinished); without it the table's one
    unfinished snapshot is resumed, or a new one starts. A snapshot already finished,
    or resumed with another --where or --chunk than it started with, is refused."""
    unfinished = [s for s in snapshots if s.finished_at is None]
    if request.snapshot_id is not None:
        chosen = next((s for s in snapshots if s.snapshot_id == request.snapshot_id), None)
        if chosen is not None and chosen.finished_at is not None:
            raise OpsError(
                f"snapshot {chosen.snapshot_id} of {request.table} finished at "
                f"{chosen.finished_at:%Y-%m-%dT%H:%M:%SZ} ({_rows(chosen.rows)}): "
                "nothing to resume; leave out --id (or give a new one) to take a new snapshot"
            )
    elif len(unfinished) > 1:
        ids = ", ".join(s.snapshot_id for s in unfinished)
        raise OpsError(
            f"{request.table} has {len(unfinished)} unfinished snapshots ({ids}): "
            "give --id to say which to resume"
        )
    else:
        chosen = unfinished[0] if unfinished else None
    if chosen is None:
        if request.snapshot_id is not None:
            return request.snapshot_id, None
        taken = {s.snapshot_id for s in snapshots}
        snapshot_id = new_snapshot_id(request.table, now)
        suffix = 1
        while snapshot_id in taken:  # two snapshots within a second
            suffix += 1
            snapshot_id = f"{new_snapshot_id(request.table, now)}-{suffix}"
        return snapshot_id, None
    _require_same_selection(request, chosen)
    return chosen.snapshot_id, chosen


def _require_same_selection(request: Request, resumed: Progress) -> None:
    def shown(where: str | None) -> str:
        return "no --where" if where is None else f"--where {where!r}"

    if request.where != resumed.where_clause:
        raise OpsError(
            f"snapshot {resumed.snapshot_id} of {request.table} was started with "
            f"{shown(resumed.where_clause)}, not {shown(request.where)}: run it again as it "
            "was started to resume it, or give --id NEW to start another snapshot"
        )
    if request.chunk is not None and request.chunk != resumed.chunk_size:
        raise OpsError(
            f"snapshot {resumed.snapshot_id} of {request.table} was started with --chunk "
            f"{resumed.chunk_size}, not {request.chunk}: leave out --chunk to resume it, or "
            "give --id NEW to start another snapshot"
        )


def plan_lines(plan: Plan, progress_table: str) -> list[str]:
    resumed = plan.resumed
    state = (
        f"resuming after {_rows(resumed.rows)} in "
        f"{count_of(resumed.chunks, 'chunk')} (last key {', '.join(resumed.last_key or ())})"
        if resumed is not None and resumed.last_key is not None
        else "resuming (no chunk committed yet)"
        if resumed is not None
        else "new"
    )
    pairs: list[tuple[str, object]] = [
        ("snapshot id", f"{plan.snapshot_id} ({state})"),
        ("rows", plan.where or "all"),
        ("to write", f"about {plan.estimated_rows:,} rows (counted now)"),
        ("chunks", f"{plan.chunk:,} rows each, in key order, one transaction each"),
        (
            "progress",
            progress_table + (" (created when missing)" if plan.create_progress_table else ""),
        ),
    ]
    return [f"snapshot of {plan.table}:", *("  " + line for line in key_values(pairs))]


def _rows(count: int) -> str:
    return f"{count:,} row" + ("" if count == 1 else "s")


def progress_text(done: int, estimated: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    total = max(estimated, done)
    share = f" ({done * 100 // total}%)" if total else ""
    return f"{done:,} of about {total:,} rows{share}, {rate:,.0f} rows/s"


# --- the command -----------------------------------------------------------------------


async def snapshot_command(
    config: BridgeConfig,
    dsn: str,
    request: Request,
    *,
    out: Callable[[str], None] = print,
) -> int:
    _require_change_table(config, request.table)
    progress_table = config.outbox.snapshot_table
    conn = await connect_postgres(
        dsn, config.postgres.connect_timeout, password=password_for(config, dsn)
    )
    async with conn:
        shape = await _require_shape(conn, request.table)
        await _require_privileges(conn, request.table, progress_table)
        if config.postgres.source != "standby":  # there the slot is the standby's
            await _require_slot(conn, config.postgres.slot)
        if not await sql_snapshot.try_lock(conn, request.table):
            pid = await sql_snapshot.lock_holder(conn, request.table)
            raise OpsError(
                f"another snapshot of {request.table} is running"
                + (f" (pid {pid})" if pid is not None else "")
                + ": wait for it, or stop it (it resumes where it stopped); a session whose "
                "command was killed holds it until it ends"
                + (f" (SELECT pg_terminate_backend({pid}))" if pid is not None else "")
            )
        plan = await _plan(conn, config, shape, request)
        if not request.as_json:
            for line in plan_lines(plan, progress_table):
                out(line)
        if request.dry_run or not request.yes:
            if request.as_json:
                out(dumps(_document(plan, rows=0, chunks=0, seconds=0.0, finished=False)))
            elif not request.dry_run:
                out("nothing written: run again with --yes to write it")
            return EXIT_OK if request.dry_run else EXIT_FAILED
        return await _write(conn, config, shape, plan, request.as_json, out)


def _require_change_table(config: BridgeConfig, table: str) -> None:
    if table not in config.outbox.change_tables:
        raise OpsError(
            f"{table} is not in outbox.change_tables: its R events would be routed like "
            "changes the bridge does not stream; add it there (and to the publication: "
            "`cdc-bridge check` says how), then take the snapshot"
        )


async def _require_shape(conn: AsyncConn, table: str) -> TableShape:
    shape = await sql_snapshot.table_shape(conn, table)
    if shape is None:
        raise OpsError(f"table {table} does not exist in this database (or is not a table)")
    if not shape.key:
        raise OpsError(
            f"table {table} has no primary key: a snapshot reads it in key order, resumes "
            "after the last key it wrote and makes each event's Nats-Msg-Id from the key; "
            f"add one (ALTER TABLE {table} ADD PRIMARY KEY (...))"
        )
    return shape


async def _require_privileges(conn: AsyncConn, table: str, progress_table: str) -> None:
    missing = await sql_snapshot.missing_privileges(conn, table, progress_table)
    if missing:
        role = await sql_snapshot.current_role(conn)
        raise OpsError(
            f"role {role} lacks {'; '.join(missing)}: grant them (sql/role.sql, "
            "snapshot_tables), or run the snapshot with --dsn as a role that has them"
        )


async def _require_slot(conn: AsyncConn, name: str) -> None:
    slot = await get_slot(conn, name)
    if slot is None or slot.wal_status == "lost":
        state = "does not exist" if slot is None else "is lost"
        raise OpsError(
            f"slot {name} {state}: the snapshot's rows would never reach the bridge; start "
            "the bridge (or run `cdc-bridge init`) first, then take the snapshot"
        )


async def _plan(conn: AsyncConn, config: BridgeConfig, shape: TableShape, request: Request) -> Plan:
    progress_table = config.outbox.snapshot_table
    snapshots = await sql_snapshot.progress_of(conn, progress_table, request.table)
    snapshot_id, resumed = choose_snapshot(request, snapshots, datetime.now(UTC))
    chunk = request.chunk or (
        resumed.chunk_size
        if resumed
        else sql_snapshot.default_chunk(config.nats.batch_max_messages)
    )
    try:
        estimated = await sql_snapshot.count_rows(
            conn, shape, request.where, resumed.last_key if resumed else None
        )
    except psycopg.Error as exc:
        if request.where is None:
            raise
        raise OpsError(f"--where {request.where!r}: {describe_postgres_error(exc)}") from None
    return Plan(
        snapshot_id=snapshot_id,
        table=request.table,
        where=request.where,
        chunk=chunk,
        estimated_rows=estimated,
        resumed=resumed,
        create_progress_table=not await sql_snapshot.progress_table_exists(conn, progress_table),
    )


async def _write(
    conn: AsyncConn,
    config: BridgeConfig,
    shape: TableShape,
    plan: Plan,
    as_json: bool,
    out: Callable[[str], None],
) -> int:
    progress_table = config.outbox.snapshot_table
    if plan.create_progress_table:
        try:
            await sql_snapshot.create_progress_table(conn, progress_table)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise OpsError(
                f"cannot create the progress table {progress_table} "
                f"({describe_postgres_error(exc)}): create it as an administrator "
                "(sql/role.sql does, with its grants), or set outbox.snapshot_table to a "
                "table this role may create"
            ) from None
    if plan.resumed is None:
        await sql_snapshot.start_progress(
            conn, progress_table, plan.snapshot_id, plan.table, plan.where, plan.chunk
        )
    elif not as_json:
        out(f"resuming snapshot {plan.snapshot_id} after {_rows(plan.resumed.rows)}")
    stop = _StopFlag()
    show = None if as_json else _progress_printer(plan.estimated_rows)
    after = plan.resumed.last_key if plan.resumed else None
    started = time.monotonic()

    def shown(rows: int, chunk: sql_snapshot.Chunk) -> None:
        if show is not None:
            show(rows, time.monotonic() - started, chunk.last)

    with stop.installed():
        try:
            rows, chunks, finished = await sql_snapshot.write_chunks(
                conn,
                shape,
                progress_table,
                plan.snapshot_id,
                plan.where,
                plan.chunk,
                after,
                stopping=lambda: stop.requested,
                on_chunk=shown,
            )
        except LookupError as exc:
            raise OpsError(f"{exc}: stopped") from None
    seconds = time.monotonic() - started
    if as_json:
        out(dumps(_document(plan, rows=rows, chunks=chunks, seconds=seconds, finished=finished)))
    else:
        out(_result_line(plan, rows, chunks, seconds, finished))
    return EXIT_OK if finished else EXIT_FAILED


def _result_line(plan: Plan, rows: int, chunks: int, seconds: float, finished: bool) -> str:
    done = f"{_rows(rows)} in {count_of(chunks, 'chunk')} in {seconds:.1f} s"
    if finished:
        return (
            f"snapshot {plan.snapshot_id} of {plan.table} done: wrote {done}; the bridge "
            "publishes them as R events"
        )
    return (
        f"stopped: snapshot {plan.snapshot_id} of {plan.table} wrote {done} and is not "
        "finished; run the same command again to resume it after its last chunk"
    )


def _document(
    plan: Plan, *, rows: int, chunks: int, seconds: float, finished: bool
) -> dict[str, object]:
    document: dict[str, object] = {
        "snapshot_id": plan.snapshot_id,
        "table": plan.table,
        "where": plan.where,
        "chunk": plan.chunk,
        "estimated_rows": plan.estimated_rows,
        "resumed_from": plan.resumed.rows if plan.resumed else None,
        "rows": rows,
        "chunks": chunks,
        "seconds": round(seconds, 3),
        "finished": finished,
    }
    return {key: document[key] for key in SNAPSHOT_KEYS}


def _progress_printer(estimated: int) -> Callable[[int, float, bool], None]:
    """An updating line on a terminal; a line every few seconds otherwise (stderr)."""
    tty = sys.stderr.isatty()
    every = TTY_PROGRESS_EVERY if tty else PLAIN_PROGRESS_EVERY
    shown = [time.monotonic()]

    def show(done: int, seconds: float, last: bool) -> None:
        now = time.monotonic()
        if now - shown[0] < every and not (last and tty):
            return
        shown[0] = now
        text = progress_text(done, estimated, seconds)
        if tty:
            print(f"\r{text}\x1b[K", end="\n" if last else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    return show


class _StopFlag:
    """SIGINT/SIGTERM ask to stop at the next chunk boundary: the chunk in flight
    commits (or not) on its own, and the progress row says which."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._request)
                installed.append(signum)
        try:
            yield self
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def _request(self) -> None:
        self.requested = True


# --- the command line ------------------------------------------------------------------


def snapshot_id_argument(text: str) -> str:
    if not valid_snapshot_id(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: 1-64 characters A-Z a-z 0-9 _ - . (it goes into every Nats-Msg-Id)"
        )
    return text


def _handler(args: argparse.Namespace) -> int:
    from cdc_bridge.cli.errors import run_command
    from cdc_bridge.config.load import load_config

    async def main() -> int:
        config = load_config(args.config)
        request = Request(
            table=qualified(args.table),
            where=args.where,
            chunk=args.chunk,
            snapshot_id=args.id,
            dry_run=args.dry_run,
            yes=args.yes,
            as_json=args.json,
        )
        return await snapshot_command(config, args.dsn or config.postgres.dsn, request)

    return run_command(main)


def register(commands: Subcommands, name: str, summary: str) -> None:
    parser = command_parser(
        commands,
        name,
        summary,
        "Publish a change table's current rows (or those matching --where) as change "
        "events with action R (read), routed, formatted and dead-lettered like the table's "
        "other changes. It writes them, the running bridge publishes them: chunk by chunk, "
        "in primary key order, each chunk in one transaction that locks its rows against "
        "writers (SELECT ... FOR SHARE) and writes each row into the WAL as a logical "
        "decoding message, so a writer's change of a row is published after its R.\n"
        "Resumable: progress is kept in outbox.snapshot_table, in each chunk's "
        "transaction; run the same command again after a stop or a crash and it goes on "
        "after the last chunk it committed, with the same snapshot id, so nothing is "
        "published twice (each R's Nats-Msg-Id is snapshot id, table and key). One "
        "snapshot of a table at a time.\n"
        "Without --yes it shows what it would do and exits 1; --dry-run shows it and "
        "exits 0. The role needs SELECT and UPDATE (FOR SHARE asks for it) on the table "
        "and SELECT, INSERT, UPDATE on the progress table (sql/role.sql).\n"
        f"--json: one object with keys {key_list(SNAPSHOT_KEYS)}.",
        "  cdc-bridge snapshot --config bridge.yaml --table public.orders\n"
        "  cdc-bridge snapshot --config bridge.yaml --table public.orders --yes\n"
        "  cdc-bridge snapshot --config bridge.yaml --table orders \\\n"
        "      --where \"created_at >= '2026-11-01'\" --yes",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    parser.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    parser.add_argument(
        "--table", required=True, metavar="T", help="a table of outbox.change_tables"
    )
    parser.add_argument(
        "--where", metavar="SQL", help="only the rows matching this condition (SQL)"
    )
    parser.add_argument(
        "--chunk",
        type=positive_argument,
        metavar="N",
        help=f"rows per chunk, each one transaction (default {sql_snapshot.DEFAULT_CHUNK}, or "
        "nats.batch_max_messages if lower: such a chunk is published as one atomic batch)",
    )
    parser.add_argument(
        "--id",
        type=snapshot_id_argument,
        metavar="ID",
        help="the snapshot id (default: resume the table's unfinished one, else "
        "<table>-<UTC time>)",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the plan, write nothing")
    parser.add_argument("--yes", action="store_true", help="write the snapshot")
    json_flag(parser)
    parser.set_defaults(handler=_handler)
