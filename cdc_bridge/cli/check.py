"""``cdc-bridge check``: preflight, one line per check with the fix, exit 0 only if no FAIL.

Checks read and never change anything. A check that cannot run because an earlier
one failed (no connection) is reported as ``skip`` rather than left out, so the list
of checks is always the same.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.args import command_parser, json_flag
from cdc_bridge.cli.check_nats import nats_checks
from cdc_bridge.cli.check_postgres import postgres_checks
from cdc_bridge.cli.check_results import CheckResult
from cdc_bridge.cli.errors import EXIT_FAILED, EXIT_OK, run_command
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.render import dumps
from cdc_bridge.cli.target import require_config
from cdc_bridge.config.model import BridgeConfig

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands


def result_lines(results: list[CheckResult]) -> list[str]:
    width = max((len(result.check) for result in results), default=0)
    lines = []
    for result in results:
        fix = f" -- fix: {result.fix}" if result.fix else ""
        lines.append(f"{result.status:<4}  {result.check.ljust(width)}  {result.detail}{fix}")
    return lines


def summary(results: list[CheckResult]) -> str:
    counts = {status: 0 for status in ("FAIL", "warn", "ok", "skip")}
    for result in results:
        counts[result.status] += 1
    return ", ".join(f"{count} {status}" for status, count in counts.items() if count)


async def run_checks(config: BridgeConfig, dsn: str) -> list[CheckResult]:
    return [*await postgres_checks(config, dsn), *await nats_checks(config)]


async def check_command(config: BridgeConfig, dsn: str, *, as_json: bool) -> int:
    results = await run_checks(config, dsn)
    if as_json:
        print(dumps([result.document() for result in results]))
    else:
        print("\n".join(result_lines(results)))
        print(summary(results))
    return EXIT_FAILED if any(result.status == "FAIL" for result in results) else EXIT_OK


def _check(args: argparse.Namespace) -> int:

    async def main() -> int:
        config = require_config(args.config)
        return await check_command(config, args.dsn or config.postgres.dsn, as_json=args.json)

    return run_command(main)


def register(commands: Subcommands, name: str, summary: str) -> None:
    check = command_parser(
        commands,
        name,
        summary,
        "Check PostgreSQL and NATS for the bridge, one line per check: ok, warn, FAIL (with "
        "the fix) or skip (an earlier failure made it impossible). Changes nothing. Exit 0 "
        "only when no check FAILs.\n--json: an array of objects with keys "
        f"{key_list(json_keys.CHECK_KEYS)}.",
        "  cdc-bridge check --config /etc/cdc-bridge/config.yaml",
    )
    check.add_argument(
        "--config", required=True, metavar="FILE", help="the bridge's YAML config file"
    )
    check.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    json_flag(check)
    check.set_defaults(handler=_check)


