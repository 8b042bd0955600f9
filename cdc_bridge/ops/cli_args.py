"""The argparse sections of the ops commands, and thin handlers that call into ops/.

Only argparse and the JSON key lists are imported here; each handler imports its
command module when it runs, so ``cdc-bridge --help`` does not load psycopg or nats.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.ops import json_keys
from cdc_bridge.ops.json_keys import key_list

if TYPE_CHECKING:  # argparse has no public name for it, and it is generic only in typeshed
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
EXIT_CODES = "Exit codes: 0 ok, 1 failed or refused, 2 usage error."


class _ParagraphFormatter(argparse.HelpFormatter):
    """Wraps each line of a description on its own, so paragraphs stay apart; indented
    lines (the examples: commands to copy) are kept exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        for line in text.splitlines():
            if not line.strip() or line[0].isspace():
                lines.append(indent + line if line.strip() else "")
            else:
                lines.extend(
                    textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n".join(lines)


_FORMATTER = _ParagraphFormatter


def _lsn(text: str) -> int:
    try:
        return parse_lsn(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _xid(text: str) -> int:
    value = _positive(text)
    if value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"not a transaction id: {text}")
    return value


def _target_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="the bridge's YAML config file")
    parser.add_argument(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL DSN (instead of, or overriding, the config's postgres.dsn)",
    )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _publication_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--publication",
        metavar="NAME",
        help="the publication pgoutput decodes through (default: the config's, or the "
        "database's only one)",
    )


def _parser(
    commands: Subcommands, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=f"{description}\n\n{EXIT_CODES}",
        epilog=f"examples:\n{examples}",
        formatter_class=_FORMATTER,
    )


# --- handlers --------------------------------------------------------------------------------


def _run_with_target(args: argparse.Namespace, command: Callable[..., Awaitable[int]]) -> int:
    """Resolve --config/--dsn, then run ``command(target)`` with one-line error handling."""
    from cdc_bridge.ops.errors import run_command
    from cdc_bridge.ops.target import resolve_target

    async def main() -> int:
        return await command(resolve_target(args.config, args.dsn))

    return run_command(main)


def _slots_list(args: argparse.Namespace) -> int:
    from cdc_bridge.ops.slots_cmd import list_command

    return _run_with_target(args, lambda target: list_command(target, as_json=args.json))


def _slots_show(args: argparse.Namespace) -> int:
    from cdc_bridge.ops.slots_cmd import show_command

    return _run_with_target(
        args,
        lambda target: show_command(
            target, args.name, publication=args.publication, as_json=args.json
        ),
    )


def _slots_create(args: argparse.Namespace) -> int:
    from cdc_bridge.ops.slots_cmd import create_command

    return _run_with_target(
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
    from cdc_bridge.ops.slots_cmd import drop_command

    confirm = _ask_on_terminal if sys.stdin.isatty() else None
    return _run_with_target(
        args,
        lambda target: drop_command(
            target, args.name, publication=args.publication, yes=args.yes, confirm=confirm
        ),
    )


def _slots_peek(args: argparse.Namespace) -> int:
    from cdc_bridge.ops.slots_peek import peek_command

    return _run_with_target(
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
    from cdc_bridge.ops.slots_peek import advance_command

    return _run_with_target(
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


def _check(args: argparse.Namespace) -> int:
    from cdc_bridge.ops.check import check_command
    from cdc_bridge.ops.errors import run_command
    from cdc_bridge.ops.target import require_config

    async def main() -> int:
        config = require_config(args.config)
        return await check_command(config, args.dsn or config.postgres.dsn, as_json=args.json)

    return run_command(main)


def _init(args: argparse.Namespace) -> int:
    from cdc_bridge.ops.errors import run_command
    from cdc_bridge.ops.init import init_command
    from cdc_bridge.ops.target import require_config

    async def main() -> int:
        config = require_config(args.config)
        dsn = args.dsn or config.postgres.dsn
        return await init_command(config, dsn, dry_run=args.dry_run, as_json=args.json)

    return run_command(main)


def _status(args: argparse.Namespace) -> int:
    from cdc_bridge.config.load import load_config
    from cdc_bridge.ops.errors import UsageError, run_command
    from cdc_bridge.ops.status import status_command, status_url

    async def main() -> int:
        url = args.url
        if url is None:
            if args.config is None:
                raise UsageError("give --config FILE (its http.listen) or --url URL")
            listen = load_config(args.config).http.listen
            if listen is None:
                raise UsageError(f"{args.config} sets no http.listen: the bridge serves no status")
            url = status_url(listen)
        return await status_command(url, timeout=args.timeout, as_json=args.json)

    return run_command(main)


# --- parsers ---------------------------------------------------------------------------------


def add_slots_command(commands: Subcommands) -> None:
    slots = commands.add_parser(
        "slots",
        help="inspect and repair replication slots",
        description="Inspect and repair logical replication slots. " + EXIT_CODES,
    )
    slot_commands = slots.add_subparsers(dest="slots_command", required=True, metavar="COMMAND")

    listing = _parser(
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
    _target_flags(listing)
    _json_flag(listing)
    listing.set_defaults(handler=_slots_list)

    show = _parser(
        slot_commands,
        "show",
        "one slot, its walsender and the bridge's publication",
        "One slot as in `list`, plus the walsender streaming from it "
        "(pg_stat_replication: client, sent/write/flush/replay positions, reply time) "
        "and the bridge's publication.\n--json: one object with keys "
        f"{key_list(json_keys.SLOT_KEYS + json_keys.SHOW_EXTRA_KEYS)}; walsender is null "
        f"or has {key_list(json_keys.WALSENDER_KEYS)}; publication is null or has "
        f"{key_list(json_keys.PUBLICATION_KEYS)}.",
        "  cdc-bridge slots show cdc_bridge --config config.yaml",
    )
    show.add_argument("name", help="the slot's name")
    _target_flags(show)
    _publication_flag(show)
    _json_flag(show)
    show.set_defaults(handler=_slots_show)

    create = _parser(
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
    _target_flags(create)
    _json_flag(create)
    create.set_defaults(handler=_slots_create)

    drop = _parser(
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
    _target_flags(drop)
    _publication_flag(drop)
    drop.set_defaults(handler=_slots_drop)

    peek = _parser(
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
        type=_positive,
        default=100,
        metavar="N",
        help="stop after about N changes; whole transactions are always shown (default 100)",
    )
    _target_flags(peek)
    _publication_flag(peek)
    _json_flag(peek)
    peek.set_defaults(handler=_slots_peek)

    advance = _parser(
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
    where.add_argument("--to", type=_lsn, metavar="LSN", help="advance to this LSN (X/X)")
    where.add_argument(
        "--past-xid",
        type=_xid,
        metavar="XID",
        help="advance past the end of this pending transaction (an xid, as peek shows it)",
    )
    advance.add_argument("--yes", action="store_true", help="really advance")
    advance.add_argument(
        "--scan-limit",
        type=_positive,
        default=100_000,
        metavar="N",
        help="read at most about N pending changes to find what is skipped (default 100000)",
    )
    _target_flags(advance)
    _publication_flag(advance)
    _json_flag(advance)
    advance.set_defaults(handler=_slots_advance)


def add_check_command(commands: Subcommands) -> None:
    check = _parser(
        commands,
        "check",
        "preflight: is everything in place for the bridge?",
        "Check PostgreSQL and NATS for the bridge, one line per check: ok, warn, FAIL (with "
        "the fix) or skip (an earlier failure made it impossible). Changes nothing. Exit 0 "
        "only when no check FAILs.\n--json: an array of objects with keys "
        f"{key_list(json_keys.CHECK_KEYS)}.",
        "  cdc-bridge check --config /etc/cdc-bridge/config.yaml",
    )
    check.add_argument("--config", metavar="FILE", help="the bridge's YAML config file")
    check.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    _json_flag(check)
    check.set_defaults(handler=_check)


def add_init_command(commands: Subcommands) -> None:
    init = _parser(
        commands,
        "init",
        "create what is missing: outbox table, publication, slot, stream",
        "Create the outbox table (sql/outbox.sql), the publication, the slot and the "
        "stream when missing; leave what exists alone (differences are reported as "
        "problems, exit 1). Running it twice changes nothing the second time. --dry-run "
        "prints the SQL and the stream config instead.\n--json: an array of objects with "
        f"keys {key_list(json_keys.STEP_KEYS)}.",
        "  cdc-bridge init --config config.yaml --dry-run\n  cdc-bridge init --config config.yaml",
    )
    init.add_argument("--config", metavar="FILE", help="the bridge's YAML config file")
    init.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    init.add_argument("--dry-run", action="store_true", help="change nothing; print the plan")
    _json_flag(init)
    init.set_defaults(handler=_init)


def add_status_command(commands: Subcommands) -> None:
    status = _parser(
        commands,
        "status",
        "ask a running bridge what it is doing",
        "GET the running bridge's /status (from the config's http.listen, or --url): "
        "streaming or standby, confirmed LSN, lag, in flight, events published, last "
        "error.\n--json: the bridge's /status object, unchanged.",
        "  cdc-bridge status --config config.yaml\n"
        "  cdc-bridge status --url http://10.0.0.7:8080/status --json",
    )
    status.add_argument("--config", metavar="FILE", help="the bridge's YAML config file")
    status.add_argument("--url", help="the bridge's status URL (instead of the config's)")
    status.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)"
    )
    _json_flag(status)
    status.set_defaults(handler=_status)
