"""``cdc-bridge slots peek`` and ``slots advance``: see what is pending, skip it on purpose.

Both read the slot with PostgreSQL's peek functions, which never move it; only
``advance --yes`` moves confirmed_flush_lsn, and never backwards.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.args import (
    command_parser,
    json_flag,
    lsn_argument,
    positive_argument,
    publication_flag,
    run_with_target,
    target_flags,
    xid_argument,
)
from cdc_bridge.cli.errors import EXIT_FAILED, EXIT_OK, OpsError
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.pending import (
    Pending,
    PendingRow,
    PendingTransaction,
    check_decodable,
    choose_publication,
    read_pending,
)
from cdc_bridge.cli.render import count_of, dumps, lsn_text, table
from cdc_bridge.cli.target import Target, connect_postgres
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.source.catalog import (
    AsyncConn,
    SlotInfo,
    advance_slot,
    current_database,
    get_slot,
    wal_head_lsn,
)

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

XID_MODULUS = 1 << 32  # an xid8 (epoch << 32 | xid) names the same transaction as its xid


def change_document(tx: PendingTransaction, row: PendingRow) -> dict[str, object]:
    return {
        "xid": row.xid,
        "lsn": format_lsn(row.lsn),
        "end_lsn": lsn_text(tx.end_lsn),
        "table": row.table,
        "action": row.action,
        "id": row.row_id,
        "route": row.route,
        "subject": row.subject,
        "note": row.note,
        "data": row.data,
    }


def change_documents(transactions: Sequence[PendingTransaction]) -> list[dict[str, object]]:
    return [change_document(tx, row) for tx in transactions for row in tx.rows]


def changes_table(transactions: Sequence[PendingTransaction]) -> list[str]:
    raw = any(row.action == "raw" for tx in transactions for row in tx.rows)
    if raw:
        headers = ["xid", "end_lsn", "lsn", "data"]
        rows: list[list[object]] = [
            [row.xid, lsn_text(tx.end_lsn), format_lsn(row.lsn), row.data]
            for tx in transactions
            for row in tx.rows
        ]
    else:
        headers = ["xid", "end_lsn", "lsn", "table", "action", "id", "route", "subject", "note"]
        rows = [
            [
                row.xid, lsn_text(tx.end_lsn), format_lsn(row.lsn), row.table, row.action,
                row.row_id, row.route, row.subject, row.note,
            ]
            for tx in transactions
            for row in tx.rows
        ]  # fmt: skip
    return table(headers, rows)


async def _decodable_slot(conn: AsyncConn, name: str) -> SlotInfo:
    slot = await get_slot(conn, name)
    if slot is None:
        raise OpsError(f"no logical replication slot named {name} (see `cdc-bridge slots list`)")
    check_decodable(slot, await current_database(conn))
    return slot


def _in_use(name: str) -> OpsError:
    return OpsError(
        f"slot {name} is in use (a bridge started streaming from it): PostgreSQL lets one "
        "process at a time decode a slot. Stop the bridge and try again"
    )


@asynccontextmanager
async def _decoding(
    target: Target, name: str, publication: str | None
) -> AsyncIterator[tuple[AsyncConn, SlotInfo, str | None]]:
    """A connection, the slot (checked to be decodable here) and the publication to
    decode with; a slot that a bridge is streaming from becomes one clear error."""
    async with await connect_postgres(
        target.dsn, target.connect_timeout, password=target.password
    ) as conn:
        slot = await _decodable_slot(conn, name)
        chosen = await choose_publication(conn, slot, publication or target.publication)
        try:
            yield conn, slot, chosen
        except psycopg.errors.ObjectInUse:
            raise _in_use(name) from None


async def peek_command(
    target: Target, name: str, *, limit: int, publication: str | None, as_json: bool
) -> int:
    async with _decoding(target, name, publication) as (conn, slot, publication):
        pending = await read_pending(
            conn, slot, config=target.config, publication=publication, limit=limit
        )
    if as_json:
        document = {
            "slot_name": slot.name,
            "plugin": slot.plugin,
            "publication": publication,
            "confirmed_flush_lsn": lsn_text(slot.confirmed_flush_lsn),
            "transactions": len(pending.transactions),
            "rows": pending.row_count,
            "maybe_more": pending.maybe_more,
            "changes": change_documents(pending.transactions),
        }
        print(dumps(document))
        return EXIT_OK
    print("\n".join(_peek_lines(slot, publication, pending, limit)))
    return EXIT_OK


def _peek_lines(slot: SlotInfo, publication: str | None, pending: Pending, limit: int) -> list[str]:
    via = f", publication {publication}" if publication else ""
    after = lsn_text(slot.confirmed_flush_lsn)
    if not pending.transactions:
        return [f"slot {slot.name} ({slot.plugin}{via}): nothing pending after {after}"]
    lines = [
        f"slot {slot.name} ({slot.plugin}{via}): "
        f"{count_of(len(pending.transactions), 'transaction')}, "
        f"{count_of(pending.row_count, 'row')} pending after {after} "
        "(peeked: nothing was consumed)",
        *changes_table(pending.transactions),
    ]
    if pending.maybe_more:
        were = "was" if limit == 1 else "were"
        lines.append(
            f"more may be pending: only about {count_of(limit, 'change')} {were} read (--limit)"
        )
    return lines


@dataclass(frozen=True, slots=True)
class AdvancePlan:
    """Where the slot would move, and what it would skip on the way."""

    confirmed: int  # where the slot is now
    destination: int
    skipped: tuple[PendingTransaction, ...]
    maybe_more: bool  # the read hit --scan-limit before the destination
    warnings: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(len(tx.rows) for tx in self.skipped)


async def advance_command(
    target: Target,
    name: str,
    *,
    to_lsn: int | None,
    past_xid: int | None,
    yes: bool,
    publication: str | None,
    scan_limit: int,
    as_json: bool,
) -> int:
    """Move the slot past a position or a transaction, after showing what is skipped;
    only with ``yes`` does it move. Exit 1 when it did not."""
    async with _decoding(target, name, publication) as (conn, slot, publication):
        plan = await _plan_advance(conn, slot, target, publication, to_lsn, past_xid, scan_limit)
        reached = await advance_slot(conn, name, plan.destination) if yes else None
    if as_json:
        document = {
            "slot_name": name,
            "from_lsn": format_lsn(plan.confirmed),
            "to_lsn": format_lsn(reached if reached is not None else plan.destination),
            "advanced": reached is not None,
            "skipped_transactions": len(plan.skipped),
            "skipped_rows": plan.rows,
            "maybe_more": plan.maybe_more,
            "changes": change_documents(plan.skipped),
        }
        print(dumps(document))
    else:
        print("\n".join(_advance_lines(name, plan, reached)))
    return EXIT_OK if reached is not None else EXIT_FAILED


async def _plan_advance(
    conn: AsyncConn,
    slot: SlotInfo,
    target: Target,
    publication: str | None,
    to_lsn: int | None,
    past_xid: int | None,
    scan_limit: int,
) -> AdvancePlan:
    confirmed = slot.confirmed_flush_lsn or 0
    if past_xid is not None:
        pending = await read_pending(
            conn, slot, config=target.config, publication=publication, limit=scan_limit
        )
        skipped, destination, warnings = _through_xid(pending, past_xid % XID_MODULUS)
    else:
        assert to_lsn is not None
        _check_destination(slot.name, to_lsn, confirmed, await wal_head_lsn(conn))
        pending = await read_pending(
            conn,
            slot,
            config=target.config,
            publication=publication,
            limit=scan_limit,
            upto_lsn=to_lsn,
        )
        skipped = [tx for tx in pending.transactions if (tx.end_lsn or 0) <= to_lsn]
        destination, warnings = to_lsn, []
    # Everything read is skipped and the read was cut short: more may lie before the
    # destination than was seen.
    maybe_more = pending.maybe_more and len(skipped) == len(pending.transactions)
    return AdvancePlan(confirmed, destination, tuple(skipped), maybe_more, tuple(warnings))


def _advance_lines(name: str, plan: AdvancePlan, reached: int | None) -> list[str]:
    at_least = "at least " if plan.maybe_more else ""
    lines = [
        f"slot {name}: {format_lsn(plan.confirmed)} -> {format_lsn(plan.destination)} skips "
        f"{at_least}{count_of(len(plan.skipped), 'transaction')} "
        f"({count_of(plan.rows, 'row')}); "
        f"{'it' if len(plan.skipped) == 1 and not at_least else 'they'} will never be published"
    ]
    if plan.skipped:
        lines += changes_table(plan.skipped)
    lines += [f"WARNING: {warning}" for warning in plan.warnings]
    if reached is None:
        lines.append("not advanced: add --yes to skip them for good")
    else:
        lines.append(f"advanced: confirmed_flush_lsn is now {format_lsn(reached)}")
    return lines


def _through_xid(pending: Pending, xid: int) -> tuple[list[PendingTransaction], int, list[str]]:
    """The transactions up to and including ``xid``'s, its end LSN, and warnings."""
    for index, tx in enumerate(pending.transactions):
        if tx.xid == xid and tx.end_lsn is not None:
            notes = []
            if index:
                notes.append(
                    f"{count_of(index, 'earlier pending transaction')} "
                    f"{'comes' if index == 1 else 'come'} before {xid} and "
                    f"{'is' if index == 1 else 'are'} skipped with it (a slot can only skip a "
                    "prefix of what it holds)"
                )
            return list(pending.transactions[: index + 1]), tx.end_lsn, notes
    further = "; more is pending than was read (--scan-limit)" if pending.maybe_more else ""
    raise OpsError(
        f"transaction {xid} is not among the "
        f"{count_of(len(pending.transactions), 'transaction')} pending on the slot{further}. "
        "It may be confirmed already: see `cdc-bridge slots peek`"
    )


def _check_destination(name: str, to_lsn: int, confirmed: int, head: int) -> None:
    if to_lsn <= confirmed:
        raise OpsError(
            f"slot {name} is already confirmed up to {format_lsn(confirmed)}; a slot never "
            f"moves back, so {format_lsn(to_lsn)} is not a place to advance to"
        )
    if to_lsn > head:
        raise OpsError(f"{format_lsn(to_lsn)} is beyond the end of the WAL ({format_lsn(head)})")


# --- the command line ----------------------------------------------------------------------


def _slots_peek(args: argparse.Namespace) -> int:
    return run_with_target(
        args,
        lambda target: peek_command(
            target,
            args.name,
            limit=args.limit,
            publication=args.publication,
            as_json=args.json,
        ),
    )


def _slots_advance(args: argparse.Namespace) -> int:
    return run_with_target(
        args,
        lambda target: advance_command(
            target,
            args.name,
            to_lsn=args.to,
            past_xid=args.past_xid,
            yes=args.yes,
            publication=args.publication,
            scan_limit=args.scan_limit,
            as_json=args.json,
        ),
    )



def register_peek_and_advance(slot_commands: Subcommands) -> None:
    """`slots peek` and `slots advance`, in the `slots` group (slots.py)."""
    peek = command_parser(
        slot_commands,
        "peek",
        "show pending changes without consuming them",
        "Decode what the slot holds after confirmed_flush_lsn WITHOUT consuming it: "
        "transaction, LSNs, table, action, outbox id, and (with --config) the route and "
        "subject the bridge would use. Impossible while a bridge streams from the slot. "
        "wal2json output is shown raw.\n--json: an object with keys "
        f"{key_list(json_keys.PEEK_KEYS)}; each change has keys "
        f"{key_list(json_keys.CHANGE_KEYS)}.",
        "  cdc-bridge slots peek cdc_bridge --config config.yaml --limit 20",
    )
    peek.add_argument("name", help="the slot's name")
    peek.add_argument(
        "--limit",
        type=positive_argument,
        default=100,
        metavar="N",
        help="stop after about N changes; whole transactions are always shown (default 100)",
    )
    target_flags(peek)
    publication_flag(peek)
    json_flag(peek)
    peek.set_defaults(handler=_slots_peek)

    advance = command_parser(
        slot_commands,
        "advance",
        "skip pending changes on purpose (a poison transaction)",
        "Move the slot's confirmed_flush_lsn forward: the changes skipped are never "
        "published. Shows what would be skipped; only --yes does it. --past-xid skips up "
        "to the end of that transaction (and anything pending before it, which is shown).\n"
        f"--json: an object with keys {key_list(json_keys.ADVANCE_KEYS)}.",
        "  cdc-bridge slots advance cdc_bridge --config config.yaml --past-xid 73125\n"
        "  cdc-bridge slots advance cdc_bridge --config config.yaml --past-xid 73125 --yes\n"
        "  cdc-bridge slots advance cdc_bridge --dsn postgresql://ops@db/app --to 16/B374D848",
    )
    advance.add_argument("name", help="the slot's name")
    where = advance.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=lsn_argument, metavar="LSN", help="advance to this LSN (X/X)")
    where.add_argument(
        "--past-xid",
        type=xid_argument,
        metavar="XID",
        help="advance past the end of this pending transaction (an xid, as peek shows it)",
    )
    advance.add_argument("--yes", action="store_true", help="really advance")
    advance.add_argument(
        "--scan-limit",
        type=positive_argument,
        default=100_000,
        metavar="N",
        help="read at most about N pending changes to find what is skipped (default 100000)",
    )
    target_flags(advance)
    publication_flag(advance)
    json_flag(advance)
    advance.set_defaults(handler=_slots_advance)


