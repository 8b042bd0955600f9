"""The NATS half of ``cdc-bridge check``: read-only, one result per check."""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError

from cdc_bridge.cli.check_results import CheckResult, fail, ok, skip, warn
from cdc_bridge.cli.errors import OpsError, describe_error
from cdc_bridge.cli.nats_client import API_TIMEOUT, connect_quietly
from cdc_bridge.cli.render import count_of, human_bytes
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.subjects import subject_matches
from cdc_bridge.sink.atomic_mode import atomic_mode
from cdc_bridge.sink.connect import overlapping_streams, stream_overlap
from cdc_bridge.sink.coverage import check_stream_coverage, route_subject_filter
from cdc_bridge.sink.fast_mode import fast_mode

NATS_CHECKS = (
    "nats.server",
    "nats.jetstream",
    "nats.stream",
    "nats.atomic_transactions",
    "nats.fast_ingest",
    "nats.stream_coverage",
    "nats.max_payload",
    "nats.duplicate_window",
)


async def nats_checks(config: BridgeConfig) -> list[CheckResult]:
    try:
        nc = await connect_quietly(config)
    except OpsError as exc:
        first = fail(
            "nats.server",
            str(exc),
            "check nats.servers and that nats-server runs and admits this client",
        )
        return [first, *(skip(name, "no connection") for name in NATS_CHECKS[1:])]
    try:
        return await _checks(nc, config)
    finally:
        await nc.close()


async def _checks(nc: NatsClient, config: BridgeConfig) -> list[CheckResult]:
    version = nc.connected_server_version
    url = nc.connected_url
    where = f"{url.hostname}:{url.port}" if url is not None else "?"
    results = [
        ok("nats.server", f"nats-server {version.major}.{version.minor}.{version.patch} at {where}")
    ]
    jsm = nc.jsm(timeout=API_TIMEOUT)
    try:
        account = await jsm.account_info()
    except (nats.errors.Error, TimeoutError) as exc:
        results.append(
            fail(
                "nats.jetstream",
                f"JetStream does not answer: {describe_error(exc)}",
                "run nats-server with JetStream enabled (-js, or jetstream {} in its config) "
                "for this account",
            )
        )
        return results + [skip(name, "no JetStream") for name in NATS_CHECKS[2:]]
    results.append(
        ok("nats.jetstream", f"JetStream enabled, {count_of(account.streams, 'stream')}")
    )
    wanted = config.nats.stream
    try:
        info: StreamInfo | None = await jsm.stream_info(wanted.name)
    except NotFoundError:
        info = None
    # A missing stream that `run` could not create: others store some of its subjects.
    others = [] if info is not None else await overlapping_streams(nc, wanted, API_TIMEOUT)
    results.append(_stream(config, info, others))
    atomic = await _atomic_transactions(nc, config, info)
    results.append(atomic)
    results.append(await _fast_ingest(nc, config, info, atomic_on=" on:" in atomic.detail))
    results += await _coverage(nc, config, info)
    results.append(_max_payload(config, nc.max_payload))
    results.append(_duplicate_window(config, info))
    return results


def _stream(
    config: BridgeConfig,
    info: StreamInfo | None,
    others: list[tuple[str, tuple[str, ...] | None]],
) -> CheckResult:
    wanted = config.nats.stream
    if others:
        overlap = stream_overlap(wanted.name, wanted.subjects, others)
        return fail("nats.stream", overlap.problem, overlap.fix)
    if info is None:
        return warn(
            "nats.stream",
            f"stream {wanted.name} does not exist: the bridge creates it at start "
            f"(subjects {', '.join(wanted.subjects)})",
            "cdc-bridge init (creates it now)",
        )
    subjects = ", ".join(info.config.subjects or ())
    messages = info.state.messages if info.state is not None else 0
    return ok("nats.stream", f"stream {wanted.name} stores {subjects}; {messages} messages")


async def _atomic_transactions(
    nc: NatsClient, config: BridgeConfig, info: StreamInfo | None
) -> CheckResult:
    """The decision `run` makes at start-up (the same function), for the stream as it is
    or, when missing, as the bridge will create it. Off is a working mode: not a warning."""
    try:
        mode = await atomic_mode(nc, config.nats, info)
    except FatalError as exc:  # the line `run` stops with, fix included
        return fail("nats.atomic_transactions", str(exc))
    state = "on" if mode.enabled else "off"
    return ok("nats.atomic_transactions", f"atomic transactions: {state}: {mode.reason}")


async def _fast_ingest(
    nc: NatsClient, config: BridgeConfig, info: StreamInfo | None, *, atomic_on: bool
) -> CheckResult:
    """Per-message mode's fast path (fast_mode.py), as `run` decides it; unused while
    atomic mode is on."""
    try:
        mode = await fast_mode(nc, config.nats, info)
    except FatalError as exc:
        return fail("nats.fast_ingest", str(exc))
    state = "on" if mode.enabled else "off"
    unused = " (unused: atomic mode is on)" if atomic_on and mode.enabled else ""
    return ok("nats.fast_ingest", f"fast-ingest batches: {state}{unused}: {mode.reason}")


async def _coverage(
    nc: NatsClient, config: BridgeConfig, info: StreamInfo | None
) -> list[CheckResult]:
    if info is not None:
        problems = await check_stream_coverage(nc, config, timeout=API_TIMEOUT)
    else:
        problems = _coverage_of_configured_subjects(config)
    if not problems:
        what = "every route" + (" and the dead-letter subject" if config.dead_letter else "")
        return [ok("nats.stream_coverage", f"{what} land in a stream")]
    fix = "add the subjects to the stream (an existing stream is never changed by the bridge)"
    return [fail("nats.stream_coverage", problem, fix) for problem in problems]


def _coverage_of_configured_subjects(config: BridgeConfig) -> list[str]:
    """Without the stream: would the one the bridge creates store every subject?"""
    subjects = config.nats.stream.subjects

    def covered(subject_filter: str) -> bool:
        # Overlap, as the server's own subject lookup counts it.
        return any(
            subject_matches(s, subject_filter) or subject_matches(subject_filter, s)
            for s in subjects
        )

    problems = []
    if config.dead_letter is not None and not covered(config.dead_letter.subject):
        problems.append(
            f"dead_letter.subject: nats.stream.subjects ({', '.join(subjects)}) do not "
            f"capture {config.dead_letter.subject}"
        )
    for index, route in enumerate(config.routes):
        subject_filter = route_subject_filter(route.subject)
        if not covered(subject_filter):
            problems.append(
                f"routes[{index}].subject: nats.stream.subjects ({', '.join(subjects)}) do "
                f"not capture {subject_filter}"
            )
    return problems


def _max_payload(config: BridgeConfig, max_payload: int) -> CheckResult:
    size = human_bytes(max_payload)
    if config.dead_letter is None:
        return warn(
            "nats.max_payload",
            f"max_payload {size}: a larger event stops the bridge (no dead_letter is set)",
            "set dead_letter.subject, so that oversized events are set aside instead",
        )
    return ok("nats.max_payload", f"max_payload {size}: larger events go to the dead letter")


def _duplicate_window(config: BridgeConfig, info: StreamInfo | None) -> CheckResult:
    if info is not None:
        window = info.config.duplicate_window or 0.0
    else:  # the window the bridge would create the stream with
        window = config.nats.stream.duplicate_window
    needed = config.postgres.status_interval + config.nats.ack_timeout
    if window < needed:
        return warn(
            "nats.duplicate_window",
            f"duplicate_window {window:g}s is shorter than postgres.status_interval + "
            f"nats.ack_timeout ({needed:g}s)",
            "widen the stream's duplicate window (e.g. 2m); replays are still skipped by "
            "reading the stream's tail, the window is a second safety net",
        )
    return ok("nats.duplicate_window", f"duplicate_window {window:g}s >= {needed:g}s")
