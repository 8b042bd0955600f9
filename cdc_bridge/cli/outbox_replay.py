"""``cdc-bridge outbox replay``: publish retained rows the stream does not hold.

The rows are chosen by the audit's comparison (never assumed from the duplicate window),
routed and headed as the bridge does (bridge/replay.py), marked ``Cdc-Replay: true``.

Two writers would break the bridge's order guard (every message names its predecessor),
so publishing takes the slot's leadership lock, the one a bridge holds while it streams:
while a bridge streams, replay refuses; while replay publishes, a starting bridge waits
as a standby would. Rows the slot still holds (not yet confirmed) are left out: the
bridge publishes them itself when it streams again. Showing (--dry-run, or no --yes)
writes nothing and takes no lock, so it works beside a streaming bridge; the slot cannot
be read then, and rows the bridge has yet to publish may be listed (said in a line).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from cdc_bridge.bridge.audit import audit_stream
from cdc_bridge.bridge.replay import ReplayRefused, ReplayResult, replay_rows
from cdc_bridge.cli.args import json_flag
from cdc_bridge.cli.audit import (
    audit_id_column,
    audited_tables,
    resolve_window,
    system_source,
    terminal_progress,
)
from cdc_bridge.cli.errors import EXIT_FAILED, EXIT_OK, OpsError, run_command
from cdc_bridge.cli.nats_client import connect_quietly
from cdc_bridge.cli.pending import read_pending
from cdc_bridge.cli.render import dumps
from cdc_bridge.cli.target import connect_postgres, password_for
from cdc_bridge.config.load import load_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.routing.router import Router
from cdc_bridge.source.catalog import AsyncConn, get_slot
from cdc_bridge.source.leadership import Leadership
from cdc_bridge.source.outbox_rows import (
    begin_snapshot,
    created_times,
    ids_in_order,
    track_commit_timestamp,
)

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

# `outbox replay --json`: one object with these keys.
REPLAY_KEYS = (
    "stream", "order", "published", "would_publish", "dead_lettered", "dedup_refused",
    "in_stream", "pending_in_slot", "slot_in_use", "other_stream", "not_found", "ids",
)  # fmt: skip
PENDING_LIMIT = 1_000_000  # changes peeked from the slot at most
ORDER_COMMIT_TIMESTAMP = "commit_timestamp"
ORDER_CREATED_AT = "created_at"
_SHOWN_IDS = 10


@dataclass(frozen=True, slots=True)
class Selection:
    missing: bool = False
    ids: tuple[str, ...] | None = None
    since: float | None = None


async def pending_in_slot(
    conn: AsyncConn, config: BridgeConfig, *, publishing: bool = True
) -> set[tuple[str, str]] | None:
    """(id, table) of outbox inserts the slot still holds: the bridge will publish those.
    None when only showing and a bridge streams from the slot (it cannot be read then)."""
    slot = await get_slot(conn, config.postgres.slot)
    if slot is None or slot.wal_status == "lost":
        return set()  # nothing comes through it any more
    if slot.active and not publishing:
        return None
    try:
        pending = await read_pending(
            conn, slot, config=config, publication=config.postgres.publication,
            limit=PENDING_LIMIT,
        )  # fmt: skip
    except psycopg.errors.ObjectInUse:
        if not publishing:  # taken between the look and the read
            return None
        raise OpsError(
            f"slot {slot.name} is in use (a bridge is streaming from it): stop it, then replay"
        ) from None
    if pending.maybe_more:
        raise OpsError(
            f"slot {slot.name} holds more than {PENDING_LIMIT:,} unconfirmed changes: start "
            "the bridge and let it catch up (it publishes those itself), then replay"
        )
    return {
        (row.row_id, row.table)
        for tx in pending.transactions
        for row in tx.rows
        if row.action == "insert" and row.row_id is not None and row.table is not None
    }


async def replay_command(
    config: BridgeConfig,
    dsn: str,
    selection: Selection,
    *,
    dry_run: bool = False,
    yes: bool = False,
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    tables = audited_tables(config)
    id_column = audit_id_column(config)
    source = await system_source(config, dsn)
    password = password_for(config, dsn)
    publishing = yes and not dry_run
    lock = Leadership(dsn, config.postgres.slot, config.postgres.connect_timeout, password=password)
    try:
        if publishing and not await lock.try_acquire():
            raise OpsError(
                f"a bridge holds the leadership lock of slot {config.postgres.slot} (it is "
                "streaming): replay would break its order guard. Stop it (a standby takes "
                "over: stop every bridge of this slot), replay, then start them again"
            )
        document = await _replay(config, dsn, password, selection, tables, id_column, source,
                                 publishing)  # fmt: skip
    finally:
        await lock.release()
    if as_json:
        out(dumps(document))
    else:
        for line in _lines(document, publishing, dry_run):
            out(line)
    if publishing:
        return EXIT_FAILED if document["dedup_refused"] else EXIT_OK
    return EXIT_OK if dry_run else EXIT_FAILED


async def _replay(
    config: BridgeConfig,
    dsn: str,
    password: str | None,
    selection: Selection,
    tables: tuple[str, ...],
    id_column: str,
    source: str,
    publishing: bool,
) -> dict[str, object]:
    stream = config.nats.stream.name
    nc = await connect_quietly(config)
    try:
        js = nc.jetstream()
        snapshot = await connect_postgres(dsn, config.postgres.connect_timeout, password=password)
        other = await connect_postgres(dsn, config.postgres.connect_timeout, password=password)
        async with snapshot, other:
            await begin_snapshot(snapshot)
            window = await resolve_window(snapshot, selection.since, None, None)
            by_commit_timestamp = await track_commit_timestamp(snapshot)
            # After the snapshot: every row it sees that the slot still holds is found.
            pending = await pending_in_slot(other, config, publishing=publishing)
            wanted: set[tuple[str, str]] = set()
            audit = await audit_stream(
                js,
                stream,
                source,
                lambda chosen: ids_in_order(snapshot, tables, id_column, chosen, selection.ids),
                None,
                tables=frozenset(tables),
                id_column=id_column,
                window=window,
                created_at=lambda keys: created_times(snapshot, id_column, keys),
                progress=terminal_progress(f"checking stream {stream}"),
                on_missing=lambda row_id, table: wanted.add((row_id, table)),
            )
            held = len(wanted & pending) if pending is not None else 0
            wanted -= pending or set()
            info = await js.stream_info(stream)
            try:
                result = await replay_rows(
                    js,
                    snapshot,
                    config,
                    Router(config, max_payload=nc.max_payload),
                    wanted,
                    source=source,
                    stream_subjects=tuple(info.config.subjects or ()),
                    window=audit.window,
                    by_commit_timestamp=by_commit_timestamp,
                    publish=publishing,
                    only_ids=selection.ids,
                )
            except ReplayRefused as exc:
                raise OpsError(str(exc)) from None
    finally:
        await nc.close()
    order = ORDER_COMMIT_TIMESTAMP if by_commit_timestamp else ORDER_CREATED_AT
    document = _document(stream, order, result, held, publishing)
    document["slot_in_use"] = pending is None
    document["in_stream"] = audit.rows - audit.missing
    # --ids: the given ids without a retained row (never written, or deleted since)
    found = audit.rows + audit.outside_retention
    document["not_found"] = len(set(selection.ids)) - found if selection.ids else 0
    return {key: document[key] for key in REPLAY_KEYS}


def _document(
    stream: str, order: str, result: ReplayResult, held: int, publishing: bool
) -> dict[str, object]:
    return {
        "stream": stream,
        "order": order,
        "published": result.published if publishing else 0,
        "would_publish": result.planned,
        "dead_lettered": result.dead_lettered,
        "dedup_refused": result.dedup_refused,
        "pending_in_slot": held,
        "other_stream": result.other_stream,
        "ids": result.ids,
    }


def _lines(document: dict[str, object], publishing: bool, dry_run: bool) -> list[str]:
    order = (
        "commit order (pg_xact_commit_timestamp: track_commit_timestamp is on)"
        if document["order"] == ORDER_COMMIT_TIMESTAMP
        else "created_at, then id (track_commit_timestamp is off: commit order is not known)"
    )
    ids = document["ids"]
    assert isinstance(ids, list)
    planned = document["would_publish"]
    assert isinstance(planned, int)
    lines = [f"replay into stream {document['stream']}, in order of {order}"]
    if document["in_stream"]:
        lines.append(f"already in the stream (left alone): {document['in_stream']} rows")
    if document["not_found"]:
        lines.append(f"not found: {document['not_found']} of the given ids have no retained row")
    if document["pending_in_slot"]:
        lines.append(
            f"left for the bridge: {document['pending_in_slot']} missing rows the slot still "
            "holds (it publishes them when it streams)"
        )
    if document["slot_in_use"]:
        lines.append(
            "a bridge is streaming from the slot, which cannot be read meanwhile: rows it has "
            "yet to publish may be listed below (--yes needs it stopped)"
        )
    if document["other_stream"]:
        lines.append(
            f"left alone: {document['other_stream']} rows routed outside stream "
            f"{document['stream']} (not audited)"
        )
    shown = ", ".join(ids[:_SHOWN_IDS]) + (" ..." if planned > _SHOWN_IDS else "")
    if publishing:
        lines.append(
            f"published {document['published']} rows ({document['dead_lettered']} as dead "
            f"letters)" + (f": {shown}" if planned else "")
        )
        if document["dedup_refused"]:
            lines.append(
                f"FAIL: {document['dedup_refused']} rows refused by JetStream as duplicates "
                "though no message holds their id (deleted within the stream's "
                "duplicate_window): run replay again once the window has passed"
            )
        return lines
    lines.append(f"would publish {planned} rows" + (f": {shown}" if planned else ""))
    if not dry_run:
        lines.append("nothing published: give --yes to publish them")
    return lines


# --- the command line ----------------------------------------------------------------------


def _replay_handler(args: argparse.Namespace) -> int:
    async def main() -> int:
        config = load_config(args.config)
        selection = Selection(
            missing=args.missing,
            ids=tuple(args.ids) if args.ids is not None else None,
            since=args.since,
        )
        return await replay_command(
            config,
            args.dsn or config.postgres.dsn,
            selection,
            dry_run=args.dry_run,
            yes=args.yes,
            as_json=args.json,
        )

    return run_command(main)


def register_replay(outbox_commands: Subcommands) -> None:
    from cdc_bridge.cli.audit import duration_argument

    replay = outbox_commands.add_parser(
        "replay",
        help="publish retained rows the stream does not hold (after a lost slot)",
        description="Publish retained outbox rows that the stream does not hold, through\n"
        "the bridge's routing, headers and dead-letter rules, with their original\n"
        "Nats-Msg-Id and `Cdc-Replay: true`. What the stream holds is checked (as\n"
        "`audit` does), never assumed. --missing replays what `audit` reports missing.\n"
        "Order: commit order when track_commit_timestamp is on, else created_at, id.\n"
        "Publishing takes the slot's leadership lock: it refuses while a bridge streams.\n"
        "--dry-run (or no --yes) writes nothing and works beside a streaming bridge.\n"
        "Without --yes it only shows what it would publish, and exits 1.\n\n"
        f"--json keys: {', '.join(REPLAY_KEYS)}.\n\n"
        "Exit codes: 0 published (or --dry-run), 1 refused or nothing published, 2 usage.",
        epilog="examples:\n"
        "  cdc-bridge outbox replay --config config.yaml --missing\n"
        "  cdc-bridge outbox replay --config config.yaml --missing --yes\n"
        "  cdc-bridge outbox replay --config config.yaml --ids 5f0c... 77a1... --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    replay.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--missing", action="store_true", help="every row audit finds missing")
    which.add_argument("--ids", nargs="+", metavar="ID", help="these rows (if missing)")
    which.add_argument(
        "--since",
        type=duration_argument,
        metavar="DURATION",
        help="rows created since (if missing)",
    )
    replay.add_argument("--dry-run", action="store_true", help="show, publish nothing, exit 0")
    replay.add_argument("--yes", action="store_true", help="publish")
    json_flag(replay)
    replay.set_defaults(handler=_replay_handler)
