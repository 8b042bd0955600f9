"""``cdc-bridge init``: create what is missing (outbox table, publication, slot, stream).

Idempotent: what exists is left exactly as it is, even when it differs from the config
(that is reported as a problem, with the statement that would fix it, never run).
Order matters: the publication before the slot, because pgoutput looks the
publication up as of each change and cannot decode changes from before it existed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from cdc_bridge.bridge.failover import failover_without_synchronized_slot
from cdc_bridge.bridge.stream_checks import find_dropped_slot, subject_guard_space
from cdc_bridge.cli import json_keys
from cdc_bridge.cli.args import command_parser, json_flag
from cdc_bridge.cli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    OpsError,
    describe_error,
    run_command,
)
from cdc_bridge.cli.json_keys import key_list
from cdc_bridge.cli.nats_client import API_TIMEOUT, connect_quietly
from cdc_bridge.cli.render import dumps, table
from cdc_bridge.cli.target import password_for, require_config
from cdc_bridge.config.model import BridgeConfig, NatsConfig
from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.sink.connect import (
    StreamOverlap,
    ensure_stream,
    overlapping_streams,
    stream_overlap,
)
from cdc_bridge.sink.coverage import check_stream_coverage
from cdc_bridge.source.replication import ReplicationStream

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands
from cdc_bridge.cli.init_postgres import (
    InitStep,
    SlotGuard,
    postgres_steps,
)


def stream_document(config: NatsConfig) -> dict[str, object]:
    """The stream as ``ensure_stream`` would create it."""
    stream = config.stream
    return {
        "name": stream.name,
        "subjects": list(stream.subjects),
        "storage": stream.storage,
        "num_replicas": stream.replicas,
        "duplicate_window_seconds": stream.duplicate_window,
        "max_age_seconds": stream.max_age,
    }


async def init_command(config: BridgeConfig, dsn: str, *, dry_run: bool, as_json: bool) -> int:
    # NATS first: a missing slot is only created once the stream is known to hold
    # nothing from an earlier slot of that name (see _dropped_slot_guard).
    try:
        nc: NatsClient | None = await connect_quietly(config)
        nats_problem = None
    except OpsError as exc:
        nc, nats_problem = None, str(exc)
    try:
        guard = _dropped_slot_guard(nc, config, dsn)
        steps = [
            *await postgres_steps(config, dsn, dry_run, guard),
            *await _stream_steps(nc, nats_problem, config, dry_run),
        ]
    finally:
        if nc is not None:
            await nc.close()
    if as_json:
        print(dumps([step.document() for step in steps]))
    elif dry_run:
        print("\n".join(_dry_run_lines(steps)))
    else:
        print("\n".join(_lines(steps)))
    return EXIT_FAILED if any(step.action == "problem" for step in steps) else EXIT_OK


def _lines(steps: list[InitStep]) -> list[str]:
    rows = [[step.action, step.kind, step.name, step.detail] for step in steps]
    lines = table(["action", "kind", "name", "detail"], rows)
    lines += [f"  fix: {step.sql}" for step in steps if step.action == "problem" and step.sql]
    if all(step.action == "exists" for step in steps):
        lines.append("nothing to do: everything exists")
    return lines


def _dry_run_lines(steps: list[InitStep]) -> list[str]:
    lines = ["-- cdc-bridge init --dry-run: nothing was changed"]
    for step in steps:
        lines.append(f"-- {step.kind} {step.name}: {step.action}; {step.detail}")
        if step.action == "would create" and step.sql:
            lines.append(step.sql.rstrip())
        if step.action == "would create" and step.stream_config:
            lines.append(dumps(step.stream_config))
    return lines


def _dropped_slot_guard(nc: NatsClient | None, config: BridgeConfig, dsn: str) -> SlotGuard:
    """The daemon's own rule: a missing slot whose events the stream already holds was
    dropped or lost, and recreating it silently would hide the gap. Creating it is then
    an explicit decision (`cdc-bridge slots create`)."""

    async def reason() -> str | None:
        if nc is None:
            return None  # NATS unreachable: nothing to compare with (reported separately)
        stream, slot = config.nats.stream.name, config.postgres.slot
        try:
            info = await nc.jsm(timeout=API_TIMEOUT).stream_info(stream)
        except NotFoundError:
            return None
        if info.state is None or not info.state.messages:
            return None
        replication = await ReplicationStream.connect(
            dsn,
            connect_timeout=config.postgres.connect_timeout,
            password=password_for(config, dsn),
        )
        try:
            source = f"{replication.system_id}/{slot}"  # the Cdc-Source header of its events
            # Within the bridge's subject space, as the session reads it: other bridges
            # sharing the stream write outside it, and must neither hide nor fake ours.
            space = subject_guard_space(config, nc)
            found = await find_dropped_slot(config, nc.jetstream(), replication, source, space)
        except FatalError as exc:  # another bridge inside the space: run refuses too
            return str(exc)
        finally:
            await replication.close()
        if found is None:
            return None
        if found.failover:
            return failover_without_synchronized_slot(config, replication, found.newest)
        return (
            f"missing, but stream {stream} holds its events up to LSN "
            f"{format_lsn(found.newest)}: the slot was dropped or lost, and events "
            "committed since may never have been published. Reconcile, then accept the "
            f"loss with `cdc-bridge slots create {slot}` (docs/operating.md, 'slot lost')"
        )

    return reason


async def _stream_steps(
    nc: NatsClient | None, nats_problem: str | None, config: BridgeConfig, dry_run: bool
) -> list[InitStep]:
    wanted = config.nats.stream
    if nc is None:
        if not dry_run:
            return [InitStep("stream", wanted.name, "problem", nats_problem or "no NATS")]
        unknown = f"could not look ({nats_problem}): shown as if missing"
        document = stream_document(config.nats)
        return [InitStep("stream", wanted.name, "would create", unknown, None, document)]
    try:
        return await _stream_steps_connected(nc, config, dry_run)
    except (nats.errors.Error, TimeoutError) as exc:
        return [InitStep("stream", wanted.name, "problem", describe_error(exc))]


async def _stream_steps_connected(
    nc: NatsClient, config: BridgeConfig, dry_run: bool
) -> list[InitStep]:
    wanted = config.nats.stream
    try:
        info = await nc.jsm(timeout=API_TIMEOUT).stream_info(wanted.name)
    except NotFoundError:
        info = None
    if info is None:
        detail = f"subjects {', '.join(wanted.subjects)}"
        document = stream_document(config.nats)
        if others := await overlapping_streams(nc, wanted, API_TIMEOUT):
            # JetStream would refuse it (or, to a user who may not create streams, not
            # answer): what `run` and `check` say, not a word about permissions
            overlap = stream_overlap(wanted.name, wanted.subjects, others)
            return [InitStep("stream", wanted.name, "problem", overlap.line)]
        if dry_run:
            return [InitStep("stream", wanted.name, "would create", detail, None, document)]
        try:
            await ensure_stream(nc, config.nats)
        except StreamOverlap as exc:  # created since the lookup above
            return [InitStep("stream", wanted.name, "problem", str(exc))]
        except (nats.errors.Error, TimeoutError) as exc:
            # A user that may not create streams is often refused without a word (the
            # request just times out): say what creating it takes, and who can.
            needs = (
                f"creating it needs a NATS user that may publish to "
                f"$JS.API.STREAM.CREATE.{wanted.name} (docs/security.md): an administrator "
                "runs `cdc-bridge init --config FILE` once with such a user's credentials"
            )
            return [InitStep("stream", wanted.name, "problem", f"{describe_error(exc)}; {needs}")]
        step = InitStep("stream", wanted.name, "created", detail, None, document)
    else:
        live = tuple(info.config.subjects or ())
        detail = f"stores {', '.join(live)}"
        if set(live) != set(wanted.subjects):
            detail += f" (nats.stream.subjects says {', '.join(wanted.subjects)}; left as it is)"
        step = InitStep("stream", wanted.name, "exists", detail)
    return [step, *await _coverage_steps(nc, config)]


async def _coverage_steps(nc: NatsClient, config: BridgeConfig) -> list[InitStep]:
    problems = await check_stream_coverage(nc, config, timeout=API_TIMEOUT)
    name = config.nats.stream.name
    return [InitStep("stream", name, "problem", problem) for problem in problems]


def _init(args: argparse.Namespace) -> int:

    async def main() -> int:
        config = require_config(args.config)
        dsn = args.dsn or config.postgres.dsn
        return await init_command(config, dsn, dry_run=args.dry_run, as_json=args.json)

    return run_command(main)


def register(commands: Subcommands, name: str, summary: str) -> None:
    init = command_parser(
        commands,
        name,
        summary,
        "Create the outbox table (sql/outbox.sql), the publication, the slot and the "
        "stream when missing; leave what exists alone (differences are reported as "
        "problems, exit 1). Running it twice changes nothing the second time. --dry-run "
        "prints the SQL and the stream config instead.\n--json: an array of objects with "
        f"keys {key_list(json_keys.STEP_KEYS)}.",
        "  cdc-bridge init --config config.yaml --dry-run\n  cdc-bridge init --config config.yaml",
    )
    init.add_argument(
        "--config", required=True, metavar="FILE", help="the bridge's YAML config file"
    )
    init.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    init.add_argument("--dry-run", action="store_true", help="change nothing; print the plan")
    json_flag(init)
    init.set_defaults(handler=_init)
