"""``cdc-bridge inbox prune``: the consumer side's housekeeping (``cdc_bridge.inbox``).

A command of the ``cdc-bridge`` tool rather than a ``python -m cdc_bridge.inbox`` of the
library: the library stays a library (no argparse, no printing), and this layer already
has what an operator's command needs (one-line errors with the secrets cut out, exit
codes, ages such as ``7d``, the same shape as ``outbox prune``). The work itself is the
library's ``prune_inbox``, which computes the horizon from the stream and the position.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from cdc_bridge.cli.errors import EXIT_OK, OpsError, run_command
from cdc_bridge.cli.outbox import age_argument, batch_size_argument
from cdc_bridge.cli.target import connect_postgres
from cdc_bridge.core.redaction import redact_dsn
from cdc_bridge.inbox import PruneResult, prune_inbox

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

CONNECT_TIMEOUT = 5


async def _connect_nats(url: str, creds: str | None) -> NatsClient:
    async def quiet(_error: Exception) -> None:
        pass  # the one failure line is ours

    try:
        return await nats.connect(
            url,
            name="cdc-bridge-ops",
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=CONNECT_TIMEOUT,
            error_cb=quiet,
            user_credentials=creds,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OpsError(redact_dsn(f"NATS: cannot connect to {url}: {reason}")) from None


async def prune_command(
    *,
    dsn: str,
    nats_url: str,
    creds: str | None,
    stream: str,
    consumer: str,
    older_than: float | None,
    dry_run: bool,
    batch_size: int,
    out: Callable[[str], None] = print,
) -> int:
    nc = await _connect_nats(nats_url, creds)
    try:
        conn = await connect_postgres(dsn)
        async with conn:
            try:
                result = await prune_inbox(
                    conn,
                    nc,
                    stream=stream,
                    consumer=consumer,
                    older_than=None
                    if older_than is None
                    else datetime.timedelta(seconds=older_than),
                    dry_run=dry_run,
                    batch_size=batch_size,
                )
            except NotFoundError:
                raise OpsError(f"NATS: no stream named {stream}") from None
    finally:
        await nc.close()
    out(result_line(result))
    return EXIT_OK


def result_line(result: PruneResult) -> str:
    if result.up_to_seq is None:
        return f"nothing to prune: {result.why_none}"
    verb = "would delete" if result.dry_run else "deleted"
    rows = f"{result.rows} row" if result.rows == 1 else f"{result.rows} rows"
    return (
        f"consumer {result.consumer}: {verb} {rows} of cdc_inbox recorded before"
        f" {result.recorded_before.isoformat()} at or below stream sequence {result.up_to_seq}"
    )


# --- the command line ----------------------------------------------------------------------


def _prune(args: argparse.Namespace) -> int:
    async def main() -> int:
        return await prune_command(
            dsn=args.dsn,
            nats_url=args.nats,
            creds=args.creds,
            stream=args.stream,
            consumer=args.consumer,
            older_than=args.older_than,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
        )

    return run_command(main)


def register(commands: Subcommands, name: str, summary: str) -> None:
    inbox = commands.add_parser(name, help=summary)
    inbox_commands = inbox.add_subparsers(dest="inbox_command", required=True, metavar="COMMAND")
    prune = inbox_commands.add_parser(
        "prune",
        help="delete a consumer's cdc_inbox rows that cannot be delivered again",
        description="Delete the consumer's rows of cdc_inbox (cdc_bridge.inbox) that no\n"
        "copy of their message can reach any more: recorded longer ago than the\n"
        "stream's duplicate_window (or --older-than, if longer) and at or below the\n"
        "consumer's position (cdc_inbox_position). Safe while the consumer runs.\n"
        "Print how many rows went (--dry-run: would go).\n\n"
        "The DSN may be left out: libpq's PG* variables and ~/.pgpass then apply (a\n"
        "password on the command line shows in the process list).\n\n"
        "Exit codes: 0 ok, 1 failed, 2 usage error.",
        epilog="examples:\n  cdc-bridge inbox prune --dsn 'host=db dbname=app user=app'"
        " --nats nats://nats:4222 --stream TICKETS --consumer tickets-copy --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prune.add_argument(
        "--dsn", default="", metavar="DSN", help="the consumer's PostgreSQL (default: PG* env)"
    )
    prune.add_argument(
        "--nats", default="nats://127.0.0.1:4222", metavar="URL", help="a NATS server's URL"
    )
    prune.add_argument("--creds", metavar="FILE", help="NATS credentials file")
    prune.add_argument("--stream", required=True, metavar="NAME", help="the JetStream stream")
    prune.add_argument("--consumer", required=True, metavar="NAME", help="the inbox's durable name")
    prune.add_argument(
        "--older-than",
        type=age_argument,
        metavar="AGE",
        help="keep rows younger than this too, if longer than the duplicate window (7d, 12h)",
    )
    prune.add_argument(
        "--batch-size",
        type=batch_size_argument,
        default=10_000,
        metavar="N",
        help="rows deleted per transaction (default 10000)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would go")
    prune.set_defaults(handler=_prune)
