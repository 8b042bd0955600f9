"""``cdc-bridge slots list|show``: the truth about replication slots (and the `slots` group:
create/drop in slots_lifecycle.py, peek/advance in slots_peek.py).

Lag is the WAL head minus confirmed_flush_lsn (what the consumer has not confirmed);
retained is the WAL head minus restart_lsn (what PostgreSQL keeps on disk for it).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

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
    EXIT_OK,
)
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.render import dumps, human_bytes, key_values, lsn_text, table
from cdc_bridge.cli.slots_lifecycle import register_create_and_drop
from cdc_bridge.cli.slots_peek import register_peek_and_advance
from cdc_bridge.cli.target import Target, connect_postgres, require_slot
from cdc_bridge.core.lsn import wal_behind
from cdc_bridge.core.redaction import redact
from cdc_bridge.source.catalog import (
    SlotInfo,
    WalSender,
    list_slots,
    server_version,
    wal_head_lsn,
    wal_sender,
)
from cdc_bridge.source.standbys import behind_bytes, standby_document, standby_slots
from cdc_bridge.source.tables import RoleInfo, current_role, publication_info

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

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
        "lag_bytes": wal_behind(wal_head, slot.confirmed_flush_lsn),
        "retained_bytes": wal_behind(wal_head, slot.restart_lsn),
    }
    return document


def slot_warnings(slot: SlotInfo) -> list[str]:
    """What an operator must know at once about a slot's state."""
    if slot.wal_status == "lost":
        return [
            f"slot {slot.name} is LOST: PostgreSQL removed WAL it still needed "
            "(max_slot_wal_keep_size), so events were lost. Drop it, recreate it, and "
            "republish the gap: `cdc-bridge audit`, then `cdc-bridge outbox replay --missing` "
            "(docs/operating.md, 'slot lost')"
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
            _safe_wal_cell(slot), _size(d["lag_bytes"]), _size(d["retained_bytes"]),
        ]
        for slot, d in zip(slots, documents, strict=True)
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


def safe_wal_text(slot: SlotInfo) -> str:
    """pg_replication_slots.safe_wal_size as the server means it: bytes of WAL that may
    still be written before the slot is lost; NULL when max_slot_wal_keep_size is -1
    (no limit) or the slot is lost (or has reserved no WAL yet: wal_status NULL too)."""
    if slot.wal_status == "lost":
        return "none: the slot is lost"
    if slot.wal_status is None:
        return "none yet (the slot reserves no WAL yet)"
    if slot.safe_wal_size is None:
        return "unlimited (max_slot_wal_keep_size = -1)"
    if slot.safe_wal_size <= 0:
        return f"none left ({slot.safe_wal_size} bytes): lost at the next checkpoint"
    return f"{human_bytes(slot.safe_wal_size)} ({slot.safe_wal_size} bytes)"


def _safe_wal_cell(slot: SlotInfo) -> str | None:
    if slot.safe_wal_size is None and slot.wal_status not in (None, "lost"):
        return "unlimited"
    return _size(slot.safe_wal_size)


def _size(value: object) -> str | None:
    return human_bytes(value) if isinstance(value, int) else None


async def show_command(target: Target, name: str, *, publication: str | None, as_json: bool) -> int:
    publication = publication or target.publication
    async with await connect_postgres(
        target.dsn, target.connect_timeout, password=target.password
    ) as conn:
        slot = await require_slot(conn, name)
        head = await wal_head_lsn(conn)
        sender = await wal_sender(conn, slot.active_pid) if slot.active_pid else None
        hidden = None
        if sender is not None and not sender.details_visible:
            hidden = hidden_fields_note(await current_role(conn), (await server_version(conn))[1])
        pub = await publication_info(conn, publication) if publication else None
        # Each other host of a multi-host DSN that is a standby: its copy of the slot
        connected = (conn.info.host, str(conn.info.port))
        standbys = (
            await standby_slots(target.dsn, connected, name, target.password)
            if slot.failover
            else []
        )
    document = slot_document(slot, head)
    document["walsender"] = None if sender is None else walsender_document(sender)
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
    print("\n".join(_show_lines(slot, document, hidden)))
    return EXIT_OK


def walsender_document(sender: WalSender) -> dict[str, object]:
    """`slots show --json`'s walsender: exactly json_keys.WALSENDER_KEYS; null where
    PostgreSQL reported nothing or hid the field (details_visible false)."""
    return {
        "pid": sender.pid,
        "role": sender.role,
        "details_visible": sender.details_visible,
        "application_name": sender.application_name,
        "client_addr": sender.client_addr,
        "state": sender.state,
        "sent_lsn": lsn_text(sender.sent_lsn),
        "write_lsn": lsn_text(sender.write_lsn),
        "flush_lsn": lsn_text(sender.flush_lsn),
        "replay_lsn": lsn_text(sender.replay_lsn),
        "reply_time": sender.reply_time,
    }


HIDDEN_FIELDS = "state, sent/write/flush/replay and reply_time"


def hidden_fields_note(role: RoleInfo, version_num: int) -> str:
    """Why the walsender's details are NULL, and the two ways to see them."""
    if version_num >= 160000:
        grant = f"GRANT pg_read_all_stats TO {role.name} WITH INHERIT TRUE"
    elif role.inherit:
        grant = f"GRANT pg_read_all_stats TO {role.name}"
    else:  # before 16 a NOINHERIT role only gets a granted role's rights with SET ROLE
        grant = f"GRANT pg_read_all_stats TO {role.name}; ALTER ROLE {role.name} INHERIT"
    return (
        f"hidden from role {role.name}: {HIDDEN_FIELDS} need pg_read_all_stats "
        f"(pg_monitor includes it). Run with --dsn as a role that has it, or: {grant} "
        "(see sql/role.sql); lag above does not need it"
    )


def _sender_pairs(sender: dict[str, object], hidden: str | None) -> list[tuple[str, object]]:
    role = f" (role {sender['role']})" if sender["role"] else ""
    app, addr = sender["application_name"], sender["client_addr"]
    if app is None and addr is None and not sender["details_visible"]:
        client = "hidden (another role's session)"
    else:
        client = f"{app or 'no application_name'} at {addr or 'local'}"
    pairs: list[tuple[str, object]] = [
        ("walsender", f"pid {sender['pid']}{role}"),
        ("  client", client),
    ]
    if hidden is not None:
        return [*pairs, ("  details", hidden)]

    def known(key: str) -> str:
        value = sender[key]
        return "not reported yet" if value is None else str(value)

    return [
        *pairs,
        ("  state", known("state")),
        ("  sent/write", f"{known('sent_lsn')} / {known('write_lsn')}"),
        ("  flush/replay", f"{known('flush_lsn')} / {known('replay_lsn')}"),
        ("  reply_time", known("reply_time")),
    ]


def _show_lines(
    slot: SlotInfo, document: dict[str, object], hidden: str | None = None
) -> list[str]:
    pairs: list[tuple[str, object]] = [
        ("slot", slot.name),
        ("plugin", slot.plugin),
        ("database", slot.database),
        ("active", f"yes, process {slot.active_pid}" if slot.active else "no (nobody streams)"),
        ("restart_lsn", document["restart_lsn"]),
        ("confirmed_flush_lsn", document["confirmed_flush_lsn"]),
        ("wal_status", document["wal_status"]),
        ("safe_wal_size", safe_wal_text(slot)),
        ("lag", _with_bytes(document["lag_bytes"])),
        ("retained WAL", _with_bytes(document["retained_bytes"])),
    ]
    sender = document["walsender"]
    if isinstance(sender, dict):
        pairs += _sender_pairs(sender, hidden)
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
    # standbys.copy_reason: the rule and its words are the same everywhere
    return (
        f"NOT synchronized: {standby['not_ready']}; a failover to it stops the bridge "
        "(see cdc-bridge check)"
    )


def _with_bytes(value: object) -> str | None:
    if not isinstance(value, int):
        return None
    return f"{human_bytes(value)} ({value} bytes)"


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

    register_create_and_drop(slot_commands)
    register_peek_and_advance(slot_commands)
