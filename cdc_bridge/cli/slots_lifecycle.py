"""``cdc-bridge slots create|drop``: make a slot, or drop one after saying what is lost."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.args import (
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
from cdc_bridge.cli.init_postgres import connect_primary_for_ops
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.pending import Pending, check_decodable, choose_publication, read_pending
from cdc_bridge.cli.render import count_of, dumps, human_bytes, lsn_text
from cdc_bridge.cli.target import Target, connect_postgres, require_slot
from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import wal_behind
from cdc_bridge.source.catalog import (
    AsyncConn,
    SlotInfo,
    create_slot,
    current_database,
    drop_slot,
    get_slot,
    wal_head_lsn,
)
from cdc_bridge.source.setup import failover_wanted
from cdc_bridge.source.standby_source import (
    create_slot_on_standby,
    primary_wal_lsn,
    require_standby,
    wait_until_replayed,
)
from cdc_bridge.source.tables import publication_info

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

# Decoding a huge backlog to count it would take as long as the backlog is big.
DROP_COUNT_LIMIT = 100_000


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
        if config is not None and config.postgres.source == "standby":
            # As `run` does: the publication is the primary's, the slot the standby's.
            failover = False  # a slot made on a standby cannot be a failover slot
            try:
                await require_standby(conn, config)
                primary = await connect_primary_for_ops(config)
            except FatalError as exc:
                raise OpsError(str(exc)) from None
            except psycopg.Error as exc:
                raise OpsError(f"postgres.primary_dsn: {describe_postgres_error(exc)}") from None
            async with primary:
                await _require_publication(primary, plugin, publication)
                await wait_until_replayed(conn, await primary_wal_lsn(primary))
                await create_slot_on_standby(conn, primary, name, plugin)
        else:
            await _require_publication(conn, plugin, publication)
            failover = _failover(target, conn.info.server_version)
            await create_slot(conn, name, plugin, failover=failover)
        created = await require_slot(conn, name)
    start = lsn_text(created.confirmed_flush_lsn)
    if as_json:
        print(dumps({"slot_name": name, "plugin": plugin, "lsn": start, "failover": failover}))
        return EXIT_OK
    kind = f"{plugin}, a failover slot" if failover else plugin
    print(
        f"created slot {name} ({kind}) at {start}: changes committed from now on will be "
        "streamed; anything committed before is not"
    )
    if plugin == "pgoutput" and publication is None:
        print("note: a pgoutput slot needs its publication to exist before the changes it reads")
    return EXIT_OK


async def _require_publication(conn: AsyncConn, plugin: str, publication: str | None) -> None:
    """pgoutput looks the publication up as of each change: a slot made before it
    fails to decode everything committed in between."""
    if (
        plugin == "pgoutput"
        and publication is not None
        and await publication_info(conn, publication) is None
    ):
        raise OpsError(
            f"publication {publication} does not exist yet, and a pgoutput slot must "
            "be created after it: run `cdc-bridge init`, which creates both in order"
        )


def _failover(target: Target, server_version_num: int) -> bool:
    """As `run` would create it: with a config, a failover slot where postgres.failover
    says so (auto: PostgreSQL 17+); without one, a plain slot."""
    if target.config is None:
        return False
    try:
        return failover_wanted(target.config, server_version_num)
    except FatalError as exc:
        raise OpsError(str(exc)) from None


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
        slot = await require_slot(conn, name)
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
    lag = wal_behind(head, slot.confirmed_flush_lsn)
    retained = wal_behind(head, slot.restart_lsn)
    lines = [f"dropping slot {slot.name} ({slot.plugin}, database {slot.database}) loses:"]
    lines.append(f"  {human_bytes(lag)} of WAL its consumer has not confirmed")
    if isinstance(pending, str):
        lines.append(f"  {pending}")
    else:
        at_least = "at least " if pending.maybe_more else ""
        lines.append(
            f"  {at_least}{count_of(pending.row_count, 'pending row')} in "
            f"{count_of(len(pending.transactions), 'transaction')}: never published, and never "
            "readable from the WAL again"
        )
    lines.append(f"PostgreSQL may then free {human_bytes(retained)} of retained WAL.")
    lines.append(
        "A new slot starts at the WAL head. A bridge whose stream already holds events from "
        f"this slot will not recreate it on its own: `cdc-bridge slots create {slot.name}` "
        "accepts the loss."
    )
    return lines


# --- the command line ----------------------------------------------------------------------


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


def register_create_and_drop(slot_commands: Subcommands) -> None:
    """`slots create` and `slots drop`, in the `slots` group (slots.py)."""
    create = command_parser(
        slot_commands,
        "create",
        "create a slot (it streams only what commits from now on)",
        "Create a logical slot. It starts at the WAL head: only changes committed from now "
        "on are streamed. With --config, a pgoutput slot is refused while the publication "
        "is missing (create both with `cdc-bridge init`), and the slot is made as `run` "
        "would: a failover slot where postgres.failover says so (auto: PostgreSQL 17+).\n"
        "--json: an object with keys "
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
