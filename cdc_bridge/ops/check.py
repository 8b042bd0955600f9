"""``cdc-bridge check``: preflight, one line per check with the fix, exit 0 only if no FAIL.

Checks read and never change anything. A check that cannot run because an earlier
one failed (no connection) is reported as ``skip`` rather than left out, so the list
of checks is always the same.
"""

from __future__ import annotations

from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.ops.check_nats import nats_checks
from cdc_bridge.ops.check_postgres import postgres_checks
from cdc_bridge.ops.check_results import CheckResult
from cdc_bridge.ops.errors import EXIT_FAILED, EXIT_OK
from cdc_bridge.ops.render import dumps


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
