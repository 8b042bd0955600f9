"""``cdc-bridge audit``: does the stream hold every retained outbox row exactly once?

Read-only on both sides: one READ ONLY snapshot of the outbox tables, and a headers-only
read of the stream through an ephemeral consumer (the one thing it creates, in memory,
deleted at the end). Memory stays bounded however long the stream (bridge/audit.py says
how), so it can run from cron.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cdc_bridge.bridge.audit import AuditResult, audit_outbox
from cdc_bridge.cli.args import command_parser, json_flag
from cdc_bridge.cli.errors import EXIT_FAILED, EXIT_OK, OpsError, UsageError, run_command
from cdc_bridge.cli.nats_client import connect_quietly
from cdc_bridge.cli.outbox import parse_age
from cdc_bridge.cli.render import dumps, key_values
from cdc_bridge.cli.target import connect_postgres, password_for
from cdc_bridge.config.load import load_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.outbox_rows import (
    Window,
    begin_snapshot,
    server_now,
)
from cdc_bridge.source.replication import ReplicationStream

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

# `audit --json`: one object with these keys.
AUDIT_KEYS = (
    "stream", "source", "from", "until", "rows", "messages", "missing", "duplicated",
    "extra_copies", "out_of_order", "order_checked", "unretained", "outside_window",
    "outside_retention", "replayed", "stream_expired_before", "missing_ids", "duplicated_ids",
    "out_of_order_ids",
)  # fmt: skip
_SHOWN_IDS = 10  # in the text output; --json lists up to 1,000


def audit_id_column(config: BridgeConfig) -> str:
    """The one column every message id comes from; OpsError when routes disagree."""
    columns = {route.id for route in config.routes} | {config.outbox.id_column}
    if len(columns) > 1:
        named = ", ".join(sorted(columns))
        raise OpsError(
            f"routes take Nats-Msg-Id from different columns ({named}): audit compares by "
            "one id column; give every route the same `id` (or none, for outbox.id_column)"
        )
    return columns.pop()


def audited_tables(config: BridgeConfig) -> tuple[str, ...]:
    if not config.outbox.tables:
        raise OpsError(
            "nothing to audit: the config names no outbox table (outbox.table); logical "
            "messages (outbox.message_prefixes) leave no rows to compare the stream with"
        )
    return config.outbox.tables


async def system_source(config: BridgeConfig, dsn: str) -> str:
    """The Cdc-Source header of this bridge's messages: ``<system identifier>/<slot>``."""
    replication = await ReplicationStream.connect(
        dsn, connect_timeout=config.postgres.connect_timeout, password=password_for(config, dsn)
    )
    try:
        return f"{replication.system_id}/{config.postgres.slot}"
    finally:
        await replication.close()


def terminal_progress(label: str) -> Callable[[int, int], None] | None:
    """A progress line on stderr, twice a second at most, only on a terminal."""
    if not sys.stderr.isatty():
        return None
    shown = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if now - shown[0] >= 0.5 or done >= total:
            shown[0] = now
            end = "\n" if done >= total else ""
            print(f"\r{label}: {done:,} of {total:,} messages", end=end, file=sys.stderr)

    return show


async def resolve_window(
    conn: AsyncConn, since: float | None, start: datetime | None, until: datetime | float | None
) -> Window:
    now = await server_now(conn)
    begin = now - timedelta(seconds=since) if since is not None else start
    end = now - timedelta(seconds=until) if isinstance(until, float) else until
    if begin is not None and end is not None and end <= begin:
        raise UsageError("--until must be later than the window's start")
    return Window(begin, end)


async def audit_command(
    config: BridgeConfig,
    dsn: str,
    *,
    since: float | None = None,
    start: datetime | None = None,
    until: datetime | float | None = None,
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    tables = audited_tables(config)
    id_column = audit_id_column(config)
    source = await system_source(config, dsn)
    password = password_for(config, dsn)
    nc = await connect_quietly(config)
    try:
        snapshot = await connect_postgres(dsn, config.postgres.connect_timeout, password=password)
        lookups = await connect_postgres(dsn, config.postgres.connect_timeout, password=password)
        async with snapshot, lookups:
            await begin_snapshot(snapshot)  # before the stream is read: see bridge/audit.py
            window = await resolve_window(snapshot, since, start, until)
            result = await audit_outbox(
                nc.jetstream(),
                config.nats.stream.name,
                source,
                snapshot,
                lookups,
                tables=tables,
                id_column=id_column,
                window=window,
                progress=terminal_progress(f"reading stream {config.nats.stream.name}"),
            )
    finally:
        await nc.close()
    for line in [dumps(audit_document(result))] if as_json else audit_lines(result, config):
        out(line)
    return EXIT_OK if result.clean else EXIT_FAILED


def _time_text(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def audit_document(result: AuditResult) -> dict[str, object]:
    values: dict[str, object] = {
        "stream": result.stream,
        "source": result.source,
        "from": _time_text(result.window.start),
        "until": _time_text(result.window.end),
    }
    for key in AUDIT_KEYS[4:]:
        values[key] = getattr(result, key)
    values["stream_expired_before"] = _time_text(result.stream_expired_before)
    return values


def audit_lines(result: AuditResult, config: BridgeConfig) -> list[str]:
    window = result.window
    if window.start is None and window.end is None:
        scope = "every retained row"
    else:
        scope = f"rows created from {_time_text(window.start) or 'the first'} until " + (
            _time_text(window.end) or "now"
        )
    copies = "copy" if result.extra_copies == 1 else "copies"
    lines = [
        f"audit of stream {result.stream} for {result.source}: {scope}",
        *key_values(
            [
                ("rows", result.rows),
                (
                    "messages",
                    f"{result.messages} read, {result.ours} of this bridge's outbox"
                    f" rows ({result.replayed} replayed)",
                ),
                ("missing", result.missing),
                ("duplicated", f"{result.duplicated} ids ({result.extra_copies} extra {copies})"),
                ("out of order", f"{result.out_of_order} (of {result.order_checked} checked)"),
                (
                    "unretained",
                    f"{result.unretained} (row no longer retained: deleted or pruned, expected)",
                ),
                ("outside window", result.outside_window),
                (
                    "outside retention",
                    f"{result.outside_retention} (rows whose messages the stream's limits "
                    "removed: expected)",
                ),
            ]
        ),
    ]
    if result.stream_expired_before is not None:
        lines.append(
            "the stream's limits (max_age, max_msgs, max_bytes) removed its oldest messages: "
            f"rows created before {_time_text(result.stream_expired_before)} (the row of "
            "the first message it holds) that have no message are outside its retention"
        )
    for label, ids, count in (
        ("missing", result.missing_ids, result.missing),
        ("duplicated", result.duplicated_ids, result.duplicated),
        ("out of order", result.out_of_order_ids, result.out_of_order),
    ):
        if count:
            more = (
                f" (and {count - _SHOWN_IDS} more; --json lists 1000)" if count > _SHOWN_IDS else ""
            )
            lines.append(f"{label} ids: {', '.join(ids[:_SHOWN_IDS])}{more}")
    if result.clean:
        lines.append("ok: every row in the window is in the stream, once")
    else:
        problems = []
        if result.missing:
            problems.append(f"{result.missing} missing")
        if result.duplicated:
            problems.append(f"{result.duplicated} duplicated")
        fix = " -- fix: cdc-bridge outbox replay --config FILE --missing" if result.missing else ""
        lines.append(f"FAIL: {', '.join(problems)}{fix}")
    return lines


# --- the command line ----------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601, e.g. 2026-12-01T08:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def duration_argument(text: str) -> float:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("an age", "a duration")) from None


def _time_or_duration(text: str) -> datetime | float:
    """--until: a time, or a duration ago (``5m``: rows younger than 5 minutes are left
    for the bridge to catch up with)."""
    try:
        return parse_age(text)
    except ValueError:
        return parse_time(text)


def _audit(args: argparse.Namespace) -> int:
    async def main() -> int:
        config = load_config(args.config)
        return await audit_command(
            config,
            args.dsn or config.postgres.dsn,
            since=args.since,
            start=args.start,
            until=args.until,
            as_json=args.json,
        )

    return run_command(main)


def register(commands: Subcommands, name: str, summary: str) -> None:
    parser = command_parser(
        commands,
        name,
        summary,
        "Compare the retained outbox rows (created in the window; default: all) with what "
        "the stream holds for this bridge (Cdc-Source), by id (Nats-Msg-Id): rows missing "
        "from the stream, ids stored more than once, messages out of commit order, and "
        "messages whose row is no longer retained (deleted or pruned: expected, not a "
        "failure). Reads both sides in bounded memory and writes nothing. Exit 0 when "
        "nothing is missing or duplicated, 1 otherwise.\n"
        "Rows the bridge has not published yet count as missing: give --until 5m (or the "
        "bridge's usual lag) when it is running.\n"
        f"--json prints one object: {', '.join(AUDIT_KEYS)} (the *_ids lists hold the "
        "first 1,000).",
        "  cdc-bridge audit --config config.yaml\n"
        "  cdc-bridge audit --config config.yaml --since 25h --until 5m --json\n"
        "  cdc-bridge audit --config config.yaml --from 2026-12-01T00:00:00Z",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    parser.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        type=duration_argument,
        metavar="DURATION",
        help="rows created this long ago or later",
    )
    start.add_argument(
        "--from",
        dest="start",
        type=parse_time,
        metavar="TIME",
        help="rows created at TIME or later",
    )
    parser.add_argument(
        "--until",
        type=_time_or_duration,
        metavar="TIME|DURATION",
        help="rows created before TIME, or before this long ago",
    )
    json_flag(parser)
    parser.set_defaults(handler=_audit)
