"""``cdc-bridge slots list|show|create|drop``: the truth about replication slots.

Lag is the WAL head minus confirmed_flush_lsn (what the consumer has not confirmed);
retained is the WAL head minus restart_lsn (what PostgreSQL keeps on disk for it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.args import (
    EXIT_CODES,
    command_parser,
    json_flag,
    publication_flag,
    run_with_target,
    target_flags,
)
from cdc_bridge.cli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    OpsError,
    UsageError,
    describe_postgres_error,
)
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.pending import Pending, check_decodable, choose_publication, read_pending
from cdc_bridge.cli.render import dumps, human_bytes, key_values, lsn_text, table
from cdc_bridge.cli.slots_peek import register_peek_and_advance
from cdc_bridge.cli.target import Target, connect_postgres
from cdc_bridge.core.redaction import redact
from cdc_bridge.source.catalog import (
    AsyncConn,
    SlotInfo,
    create_slot,
    current_database,
    drop_slot,
    get_slot,
    list_slots,
    publication_info,
    wal_head_lsn,
    wal_sender,
)
from cdc_bridge.source.standbys import behind_bytes, standby_document, standby_slots

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

# Decoding a huge backlog to count it would take as long as the backlog is big.
DROP_COUNT_LIMIT = 100_000


def _distance(head: int, lsn: int | None) -> int | None:
    # A position can be a little ahead of what this session sees as the head (a
    # keepalive's wal_end): that is no lag, not negative lag.
    return None if lsn is None else max(head - lsn, 0)


def slot_document(slot: SlotInfo, wal_head: int) -> dict[str, object]:
    """A slot as `slots list --json` shows it: exactly json_keys.SLOT_KEYS."""
    document: dict[str, object] = {
        "slot_name": slot.name,
        "plugin": slot.plugin,
        "database": slot.database,
        "active": slot.active,
        "active_pid": slot.active_pid,
        "restart_lsn": lsn_text(slot.restart_lsn),
        "confirmed_flush_lsn": lsn_text(slot.confirmed_flush_lsn),
        "wal_status": slot.wal_status,
        "safe_wal_size": slot.safe_wal_size,
        "lag_bytes": _distance(wal_head, slot.confirmed_flush_lsn),
        "retained_bytes": _distance(wal_head, slot.restart_lsn),
    }
    return document


def slot_warnings(slot: SlotInfo) -> list[str]:
    """What an operator must know at once about a slot's state."""
    if slot.wal_status == "lost":
        return [
            f"slot {slot.name} is LOST: PostgreSQL removed WAL it still needed "
            "(max_slot_wal_keep_size), so events were lost. Drop it, recreate it, and "
            "reconcile the outbox by hand (docs/operating.md, 'slot lost')"
        ]
    if slot.wal_status == "unreserved":
        return [
            f"slot {slot.name} is about to be lost (wal_status = unreserved): its WAL is "
            "past max_slot_wal_keep_size and goes at the next checkpoint. Get its consumer "
            "streaming now"
        ]
    return []


async def list_command(target: Target, *, as_json: bool) -> int:
    async with await connect_postgres(
        target.dsn, target.connect_timeout, password=target.password
    ) as conn:
        slots = await list_slots(conn)
        head = await wal_head_lsn(conn)
    documents = [slot_document(slot, head) for slot in slots]
    if as_json:
        print(dumps(documents))
        return EXIT_OK
    if not documents:
        print("no logical replication slots")
        return EXIT_OK
    rows = [
        [
            d["slot_name"], d["plugin"], d["database"], d["active"], d["active_pid"],
            d["restart_lsn"], d["confirmed_flush_lsn"], d["wal_status"],
            _size(d["safe_wal_size"]), _size(d["lag_bytes"]), _size(d["retained_bytes"]),
        ]
        for d in documents
    ]  # fmt: skip
    headers = [
        "slot", "plugin", "database", "active", "pid", "restart_lsn", "confirmed_lsn",
        "wal_status", "safe_wal", "lag", "retained",
    ]  # fmt: skip
    print("\n".join(table(headers, rows, right=(4, 8, 9, 10))))
    for slot in slots:
        for warning in slot_warnings(slot):
            print(f"WARNING: {warning}")
    return EXIT_OK


def _size(value: object) -> str | None:
    return human_bytes(value) if isinstance(value, int) else None


async def show_command(target: Target, name: str, *, publication: str | None, as_json: bool) -> int:
    publication = publication or target.publication
    async with await connect_postgres(
        target.dsn, target.connect_timeout, password=target.password
    ) as conn:
        slot = await _require_slot(conn, name)
        head = await wal_head_lsn(conn)
        sender = await wal_sender(conn, slot.active_pid) if slot.active_pid else None
        pub = await publication_info(conn, publication) if publication else None
        # Each other host of a multi-host DSN that is a standby: its copy of the slot
        connected = (conn.info.host, str(conn.info.port))
        standbys = (
            await standby_slots(target.dsn, connected, name, target.password)
            if slot.failover
            else []
        )
    document = slot_document(slot, head)
    document["walsender"] = (
        None
        if sender is None
        else {
            "pid": sender.pid,
            "application_name": sender.application_name,
            "client_addr": sender.client_addr,
            "state": sender.state,
            "sent_lsn": lsn_text(sender.sent_lsn),
            "write_lsn": lsn_text(sender.write_lsn),
            "flush_lsn": lsn_text(sender.flush_lsn),
            "replay_lsn": lsn_text(sender.replay_lsn),
            "reply_time": sender.reply_time,
        }
    )
    document["publication"] = (
        None
        if publication is None
        else {
            "name": publication,
            "exists": pub is not None,
            "tables": list(pub.tables) if pub else [],
            "operations": list(pub.operations) if pub else [],
        }
    )
    document["failover"] = slot.failover
    confirmed = slot.confirmed_flush_lsn or 0
    document["standbys"] = [
        standby_document(standby, behind_bytes(standby, confirmed), redact)
        for standby in standbys
    ]
    if as_json:
        print(dumps(document))
        return EXIT_OK
    print("\n".join(_show_lines(slot, document)))
    return EXIT_OK


def _show_lines(slot: SlotInfo, document: dict[str, object]) -> list[str]:
    safe = document["safe_wal_size"]
    pairs: list[tuple[str, object]] = [
        ("slot", slot.name),
        ("plugin", slot.plugin),
        ("database", slot.database),
        ("active", f"yes, process {slot.active_pid}" if slot.active else "no (nobody streams)"),
        ("restart_lsn", document["restart_lsn"]),
        ("confirmed_flush_lsn", document["confirmed_flush_lsn"]),
        ("wal_status", document["wal_status"]),
        ("safe_wal_size", _size(safe) if safe is not None else "unlimited or lost"),
        ("lag", _with_bytes(document["lag_bytes"])),
        ("retained WAL", _with_bytes(document["retained_bytes"])),
    ]
    sender = document["walsender"]
    if isinstance(sender, dict):
        pairs += [
            ("walsender", f"pid {sender['pid']}, {sender['state']}"),
            ("  client", f"{sender['application_name']} at {sender['client_addr'] or 'local'}"),
            ("  sent/write", f"{sender['sent_lsn']} / {sender['write_lsn']}"),
            ("  flush/replay", f"{sender['flush_lsn']} / {sender['replay_lsn']}"),
            ("  reply_time", sender["reply_time"]),
        ]
    else:
        pairs.append(("walsender", "none"))
    pub = document["publication"]
    if isinstance(pub, dict):
        if pub["exists"]:
            tables = ", ".join(pub["tables"]) or "no tables"
            what = f"{tables} ({', '.join(pub['operations']) or 'nothing'})"
        else:
            what = "DOES NOT EXIST (cdc-bridge init creates it)"
        pairs.append(("publication", f"{pub['name']}: {what}"))
    pairs.append(("failover", _failover_text(slot.failover)))
    standbys = document["standbys"]
    for standby in standbys if isinstance(standbys, list) else []:
        pairs.append((f"  standby {standby['server']}", _standby_text(standby)))
    lines = key_values(pairs)
    lines += [f"WARNING: {warning}" for warning in slot_warnings(slot)]
    return lines


def _failover_text(failover: bool | None) -> str:
    if failover is None:
        return "no (PostgreSQL before 17: a failover of the primary loses the slot)"
    return "yes (synchronized to standbys with sync_replication_slots)" if failover else "no"


def _standby_text(standby: dict[str, object]) -> str:
    if standby["error"]:
        return f"cannot ask it: {standby['error']}"
    if standby["synchronized"]:
        return f"synchronized, {_with_bytes(standby['behind_bytes'])} behind"
    if standby["invalidated"]:
        return f"NOT synchronized: its copy is invalidated ({standby['invalidated']})"
    return "NOT synchronized: a failover to it stops the bridge (see cdc-bridge check)"


def _with_bytes(value: object) -> str | None:
    if not isinstance(value, int):
        return None
    return f"{human_bytes(value)} ({value} bytes)"


async def _require_slot(conn: AsyncConn, name: str) -> SlotInfo:
    slot = await get_slot(conn, name)
    if slot is None:
        raise OpsError(f"no logical replication slot named {name} (see `cdc-bridge slots list`)")
    return slot


async def create_command(target: Target, name: str, *, plugin: str | None, as_json: bool) -> int:
    config = target.config
    plugin = plugin or (config.postgres.plugin if config is not None else "pgoutput")
    async with await connect_postgres(
        target.dsn, target.connect_timeout, password=target.password
    ) as conn:
        existing = await get_slot(conn, name)
        if existing is not None:
            raise OpsError(
                f"slot {name} already exists (plugin {existing.plugin}, confirmed up to "
                f"{lsn_text(existing.confirmed_flush_lsn)}); nothing done"
            )
        publication = target.publication
        # pgoutput looks the publication up as of each change: a slot made before it
        # fails to decode everything committed in between.
        if (
            plugin == "pgoutput"
            and publication is not None
            and await publication_info(conn, publication) is None
        ):
            raise OpsError(
                f"publication {publication} does not exist yet, and a pgoutput slot must "
                "be created after it: run `cdc-bridge init`, which creates both in order"
            )
        await create_slot(conn, name, plugin)
        created = await _require_slot(conn, name)
    start = lsn_text(created.confirmed_flush_lsn)
    if as_json:
        print(dumps({"slot_name": name, "plugin": plugin, "lsn": start}))
        return EXIT_OK
    print(
        f"created slot {name} ({plugin}) at {start}: changes committed from now on will be "
        "streamed; anything committed before is not"
    )
    if plugin == "pgoutput" and publication is None:
        print("note: a pgoutput slot needs its publication to exist before the changes it reads")
    return EXIT_OK


Confirm = Callable[[str], bool]


async def drop_command(
    target: Target,
    name: str,
    *,
    publication: str | None,
    yes: bool,
    confirm: Confirm | None,
) -> int:
    """Drop a slot that nobody streams from, after saying what is lost.

    ``confirm`` asks a person (a terminal); None when there is nobody to ask.
    """
    async with await connect_postgres(
        target.dsn, target.connect_timeout, password=target.password
    ) as conn:
        slot = await _require_slot(conn, name)
        if slot.active:
            raise OpsError(
                f"refusing to drop slot {name}: it is in use by process {slot.active_pid} "
                "(a bridge is streaming from it). Stop the bridge first"
            )
        head = await wal_head_lsn(conn)
        pending = await _count_pending(conn, target, slot, publication)
        for line in _loss_lines(slot, head, pending):
            print(line)
        if not yes:
            if confirm is None:
                raise OpsError(f"not dropped: pass --yes to drop slot {name} (no terminal to ask)")
            if not confirm(name):
                print("not dropped")
                return EXIT_FAILED
        try:
            await drop_slot(conn, name)
        except psycopg.errors.ObjectInUse:
            raise OpsError(f"not dropped: slot {name} became active meanwhile") from None
    print(f"dropped slot {name}")
    return EXIT_OK


async def _count_pending(
    conn: AsyncConn, target: Target, slot: SlotInfo, publication: str | None
) -> Pending | str:
    """The pending changes, or why they cannot be counted."""
    try:
        check_decodable(slot, await current_database(conn))
        publication = await choose_publication(conn, slot, publication or target.publication)
        return await read_pending(
            conn, slot, config=target.config, publication=publication, limit=DROP_COUNT_LIMIT
        )
    except (OpsError, UsageError) as exc:
        return f"pending rows not counted: {exc}"
    except psycopg.Error as exc:
        return f"pending rows not counted: {describe_postgres_error(exc)}"


def _loss_lines(slot: SlotInfo, head: int, pending: Pending | str) -> list[str]:
    lag = _distance(head, slot.confirmed_flush_lsn)
    retained = _distance(head, slot.restart_lsn)
    lines = [f"dropping slot {slot.name} ({slot.plugin}, database {slot.database}) loses:"]
    lines.append(f"  {human_bytes(lag)} of WAL its consumer has not confirmed")
    if isinstance(pending, str):
        lines.append(f"  {pending}")
    else:
        at_least = "at least " if pending.maybe_more else ""
        lines.append(
            f"  {at_least}{pending.row_count} pending rows in {len(pending.transactions)} "
            "transactions: never published, and never readable from the WAL again"
        )
    lines.append(f"PostgreSQL may then free {human_bytes(retained)} of retained WAL.")
    lines.append(
        "A new slot starts at the WAL head. A bridge whose stream already holds events from "
        f"this slot will not recreate it on its own: `cdc-bridge slots create {slot.name}` "
        "accepts the loss."
    )
    return lines


# --- the command line ----------------------------------------------------------------------


def _slots_list(args: argparse.Namespace) -> int:
    return run_with_target(args, lambda target: list_command(target, as_json=args.json))


def _slots_show(args: argparse.Namespace) -> int:
    return run_with_target(
        args,
        lambda target: show_command(
            target, args.name, publication=args.publication, as_json=args.json
        ),
    )


def _slots_create(args: argparse.Namespace) -> int:
    return run_with_target(
        args,
        lambda target: create_command(target, args.name, plugin=args.plugin, as_json=args.json),
    )


def _ask_on_terminal(name: str) -> bool:
    try:
        answer = input(f"type the slot's name ({name}) to drop it: ")
    except EOFError:
        return False
    return answer.strip() == name


def _slots_drop(args: argparse.Namespace) -> int:
    confirm = _ask_on_terminal if sys.stdin.isatty() else None
    return run_with_target(
        args,
        lambda target: drop_command(
            target, args.name, publication=args.publication, yes=args.yes, confirm=confirm
        ),
    )


def register(commands: Subcommands, name: str, summary: str) -> None:
    slots = commands.add_parser(
        name,
        help=summary,
        description="Inspect and repair logical replication slots. " + EXIT_CODES,
    )
    slot_commands = slots.add_subparsers(dest="slots_command", required=True, metavar="COMMAND")

    listing = command_parser(
        slot_commands,
        "list",
        "every logical slot with its lag and retained WAL",
        "Every logical slot of the cluster. lag = WAL head - confirmed_flush_lsn (what "
        "its consumer has not confirmed); retained = WAL head - restart_lsn (what "
        f"PostgreSQL keeps on disk for it).\n--json: an array of objects with keys "
        f"{key_list(json_keys.SLOT_KEYS)}.",
        "  cdc-bridge slots list --config /etc/cdc-bridge/config.yaml\n"
        "  cdc-bridge slots list --dsn postgresql://ops@db/app --json",
    )
    target_flags(listing)
    json_flag(listing)
    listing.set_defaults(handler=_slots_list)

    show = command_parser(
        slot_commands,
        "show",
        "one slot, its walsender and the bridge's publication",
        "One slot as in `list`, plus the walsender streaming from it "
        "(pg_stat_replication: client, sent/write/flush/replay positions, reply time) "
        "and the bridge's publication.\n--json: one object with keys "
        f"{key_list(json_keys.SLOT_KEYS + json_keys.SHOW_EXTRA_KEYS)}; walsender is null "
        f"or has {key_list(json_keys.WALSENDER_KEYS)}; publication is null or has "
        f"{key_list(json_keys.PUBLICATION_KEYS)}; failover is true, false or null (before "
        "PostgreSQL 17); standbys (the DSN's other hosts that are standbys, for a failover "
        f"slot) has objects with {key_list(json_keys.STANDBY_KEYS)}.",
        "  cdc-bridge slots show cdc_bridge --config config.yaml",
    )
    show.add_argument("name", help="the slot's name")
    target_flags(show)
    publication_flag(show)
    json_flag(show)
    show.set_defaults(handler=_slots_show)

    create = command_parser(
        slot_commands,
        "create",
        "create a slot (it streams only what commits from now on)",
        "Create a logical slot. It starts at the WAL head: only changes committed from now "
        "on are streamed. With --config, a pgoutput slot is refused while the publication "
        "is missing (create both with `cdc-bridge init`).\n--json: an object with keys "
        f"{key_list(json_keys.CREATE_KEYS)}.",
        "  cdc-bridge slots create cdc_bridge --config config.yaml\n"
        "  cdc-bridge slots create audit --dsn postgresql://ops@db/app --plugin wal2json",
    )
    create.add_argument("name", help="the slot's name")
    create.add_argument(
        "--plugin",
        choices=["pgoutput", "wal2json"],
        help="output plugin (default: the config's postgres.plugin, or pgoutput)",
    )
    target_flags(create)
    json_flag(create)
    create.set_defaults(handler=_slots_create)

    drop = command_parser(
        slot_commands,
        "drop",
        "drop a slot nobody streams from, after saying what is lost",
        "Drop a slot. Refused while a process streams from it. Says what is lost (WAL "
        "not confirmed, pending rows) and asks for the slot's name on a terminal; without "
        "a terminal, --yes is required.",
        "  cdc-bridge slots drop old_slot --config config.yaml\n"
        "  cdc-bridge slots drop old_slot --dsn postgresql://ops@db/app --yes",
    )
    drop.add_argument("name", help="the slot's name")
    drop.add_argument("--yes", action="store_true", help="drop without asking")
    target_flags(drop)
    publication_flag(drop)
    drop.set_defaults(handler=_slots_drop)

    register_peek_and_advance(slot_commands)
