"""The `cdc-bridge` command line: a table of commands, each in a file of its own.

Every command's file holds its argparse section (``register``) and its handler. Only the
command being run is imported: `cdc-bridge --help` loads none of them, and `run` loads
nothing that only `slots peek` or `check` need.

Exit codes: 0 ok, 1 failed or refused, 2 usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cdc_bridge import __version__, build

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands

# name -> (module, one-line summary for the top-level help), in the order help lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("cdc_bridge.cli.run", "run the bridge (the daemon)"),
    "dev": ("cdc_bridge.cli.dev", "run the bridge on a throwaway local PostgreSQL + NATS"),
    "routes": ("cdc_bridge.cli.routes", "check the routing rules"),
    "slots": ("cdc_bridge.cli.slots", "inspect and repair replication slots"),
    "check": ("cdc_bridge.cli.check", "preflight: is everything in place for the bridge?"),
    "init": (
        "cdc_bridge.cli.init",
        "create what is missing: outbox table, publication, slot, stream",
    ),
    "status": ("cdc_bridge.cli.status", "ask a running bridge what it is doing"),
    "outbox": ("cdc_bridge.cli.outbox", "housekeeping of the outbox tables"),
    "inbox": ("cdc_bridge.cli.inbox", "housekeeping of a consumer's inbox (cdc_bridge.inbox)"),
    "audit": ("cdc_bridge.cli.audit", "does the stream hold every outbox row, once, in order?"),
    "snapshot": (
        "cdc_bridge.cli.snapshot",
        "publish a change table's current rows as R (read) events, beside the bridge",
    ),
}


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: refuses unknown arguments itself, with its own usage.

    argparse hands a subcommand's leftovers up to the top-level parser, whose error shows
    the top-level usage; ``cdc-bridge run --bogus`` should show ``run``'s. Nested
    subcommands (``slots list``) are made with this class too (``add_subparsers`` uses
    the parent's class), so each level answers for its own arguments.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given ``argv``, only the command it names is filled in."""
    parser = argparse.ArgumentParser(
        prog="cdc-bridge",
        description="Relay committed outbox inserts from PostgreSQL's WAL to NATS JetStream.",
    )
    parser.add_argument(
        "--version", action="version", version=f"cdc-bridge {__version__}, {build()}"
    )
    commands: Subcommands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    named = _command_in(argv) if argv is not None else None
    for name, (module, summary) in COMMANDS.items():
        if argv is None or name == named:
            importlib.import_module(module).register(commands, name, summary)
        else:
            commands.add_parser(name, help=summary)  # its name and summary: enough for --help
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command a command line names: its first word that is not an option (the
    top-level options, --help and --version, take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(words).parse_args(words)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
