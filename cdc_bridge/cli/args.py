"""What the commands' parsers share: the help formatter, argument types, common flags.

Imports only argparse and light modules: every command file uses it in its ``register``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from cdc_bridge.core.lsn import parse_lsn

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


def lsn_argument(text: str) -> int:
    try:
        return parse_lsn(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def xid_argument(text: str) -> int:
    value = positive_argument(text)
    if value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"not a transaction id: {text}")
    return value


def target_flags(parser: argparse.ArgumentParser) -> None:
    # argparse cannot say "at least one of": the help does, and resolve_target checks.
    parser.add_argument(
        "--config", metavar="FILE", help="the bridge's YAML config file (this or --dsn is needed)"
    )
    parser.add_argument(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL DSN (instead of, or overriding, the config's postgres.dsn)",
    )


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def publication_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--publication",
        metavar="NAME",
        help="the publication pgoutput decodes through (default: the config's, or the "
        "database's only one)",
    )


def command_parser(
    commands: Subcommands, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=f"{description}\n\n{EXIT_CODES}",
        epilog=f"examples:\n{examples}",
        formatter_class=_FORMATTER,
    )


def run_with_target(args: argparse.Namespace, command: Callable[..., Awaitable[int]]) -> int:
    """Resolve --config/--dsn, then run ``command(target)`` with one-line error handling."""
    from cdc_bridge.cli.errors import run_command
    from cdc_bridge.cli.target import resolve_target

    async def main() -> int:
        return await command(resolve_target(args.config, args.dsn))

    return run_command(main)




def logging_flags(parser: argparse.ArgumentParser) -> None:
    """--log-format/--log-level of the commands that run the bridge (run, dev)."""
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        help="log rendering (default: the config's logging.format, json)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: the config's logging.level, info",
    )


def print_error(message: str) -> int:
    """One line on stderr for a failure before the bridge's logging is set up; exit 1."""
    print(f"cdc-bridge: {message}", file=sys.stderr)
    return 1
