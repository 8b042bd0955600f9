"""What a session checks and decides about the stream before it streams: the subject space
the order guard keeps to, whether others may write the stream, what its tail holds, a
dropped slot or a failover, subjects no stream stores, a short duplicate window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo
from nats.js.client import JetStreamContext

from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.subjects import filter_within
from cdc_bridge.sink.connect import (
    server_version_text,
)
from cdc_bridge.sink.coverage import check_stream_coverage
from cdc_bridge.sink.reconcile import (
    StreamTail,
    newest_source,
    read_space_tail,
    read_stream_tail,
)
from cdc_bridge.source.replication import ReplicationStream

if TYPE_CHECKING:
    from cdc_bridge.bridge.session import BridgeState, ResumePoint
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.bridge.session")


MAX_LSN = (1 << 64) - 1


# The first JetStream with Nats-Expected-Last-Subject-Sequence-Subject.
SUBJECT_GUARD_VERSION = (2, 11)


def subject_guard_space(config: BridgeConfig, nc: NatsClient) -> str | None:
    """The subject space the order guard and the tail read keep to, when the server
    can check it (2.11+); None: stream-wide. Every reader of the tail (the session,
    ``init``) keeps to this one."""
    space = config.subject_space
    version = nc.connected_server_version
    try:
        supported = (version.major, version.minor) >= SUBJECT_GUARD_VERSION
    except ValueError:  # not semver: assume an old server, the safe side
        supported = False
    return space if supported else None


def guarded_space(config: BridgeConfig, nc: NatsClient, state: BridgeState) -> str | None:
    """``subject_guard_space``, said once at start-up either way."""
    space = config.subject_space
    version = nc.connected_server_version
    told, state.told_guard_scope = state.told_guard_scope, True
    if space is not None and subject_guard_space(config, nc) is not None:
        if not told:
            log.info("order_guard", scope=space, stream=config.nats.stream.name)
        return space
    if not told:
        reason = (
            f"NATS {server_version_text(version)} checks no subject-scoped expectation (2.11+ does)"
            if space is not None
            else "the routes and dead-letter subject share no prefix: set nats.subject_space"
        )
        log.warning(
            "order_guard_stream_wide",
            stream=config.nats.stream.name,
            error=f"{reason}; another writer of the stream will fail this bridge's sessions",
        )
    return None


async def read_tail(
    js: JetStreamContext,
    stream_name: str,
    source: str,
    since_lsn: int,
    lookback: int,
    space: str | None,
) -> StreamTail:
    if space is None:
        return await read_stream_tail(js, stream_name, source, since_lsn, lookback)
    return await read_space_tail(js, stream_name, space, source, since_lsn, lookback)


@dataclass(frozen=True, slots=True)
class DroppedSlot:
    newest: int  # the LSN of the newest event of the missing slot the stream holds
    failover: bool  # a failover without a synchronized slot, rather than a drop


async def find_dropped_slot(
    config: BridgeConfig,
    js: JetStreamContext,
    stream: ReplicationStream,
    source: str,
    space: str | None,
) -> DroppedSlot | None:
    """Whether the stream (within ``space``: see ``subject_guard_space``) holds events of
    the missing slot, and whether a failover is what lost it (a new timeline, or the last
    events in this bridge's space from another system under this slot's name). That is
    asked first: the space's tail read would call the other system's messages another
    bridge's. FatalError when another bridge writes inside the space."""
    slot, stream_name = config.postgres.slot, config.nats.stream.name
    last = await newest_source(js, stream_name, space)
    if last is not None and last[0].endswith(f"/{slot}") and last[0] != source:
        return DroppedSlot(last[1], failover=True)
    newest = (await read_tail(js, stream_name, source, MAX_LSN, 1, space)).newest
    if newest is None:
        return None
    return DroppedSlot(newest[0], failover=stream.timeline > 1)


async def refuse_if_slot_was_dropped(
    config: BridgeConfig,
    js: JetStreamContext,
    stream: ReplicationStream,
    source: str,
    space: str | None = None,
) -> None:
    """Before a missing slot is created: refuse when the stream holds its events, and say
    "failover without a synchronized slot" when that is what happened (a new timeline,
    or the last events in this bridge's space from another system under this slot's
    name). That is asked first: the space's tail read would call the other system's
    messages another bridge's."""
    slot, stream_name = config.postgres.slot, config.nats.stream.name
    found = await find_dropped_slot(config, js, stream, source, space)
    if found is None:
        return
    if found.failover:
        from cdc_bridge.bridge.failover import failover_without_synchronized_slot  # rare

        raise FatalError(failover_without_synchronized_slot(config, stream, found.newest))
    raise FatalError(
        f"slot {slot} is missing, but stream {stream_name} holds "
        f"its events up to LSN {format_lsn(found.newest)}: the slot was dropped, and "
        "events committed since then may never have been published. Recreate it "
        f"(`cdc-bridge slots create {slot}`), then `cdc-bridge "
        "audit` and `cdc-bridge outbox replay --missing`; or set "
        "postgres.on_slot_lost: recover to let the bridge do it"
    )


def may_be_shared(stream_subjects: tuple[str, ...], resume: ResumePoint) -> bool:
    """Start as if others wrote the stream (one message per ack round trip, see
    ordering.py) when they did since our last message, or when the stream takes subjects
    outside our space at all: a writer that starts while we pipeline a burst would break
    it. Quiet acks bring pipelining back (ordering.QUIET_ACKS)."""
    space = resume.space
    if space is None:
        return False
    tail = resume.tail
    if tail.stream_last_seq != tail.last_seq:
        return True
    return not all(filter_within(subject, space) for subject in stream_subjects)


def check_tail(tail: StreamTail, wal_head: int, stream_name: str) -> None:
    if tail.newest is not None and tail.newest[0] > wal_head:
        raise FatalError(
            f"stream {stream_name} holds events from LSN {format_lsn(tail.newest[0])}, beyond "
            f"the database's WAL head {format_lsn(wal_head)}: the database was restored or "
            "replaced, and the stream cannot be reconciled with it automatically (fix: "
            "if postgres.dsn points at the wrong database, correct it; if the restore was "
            "meant, give the bridge a new stream (nats.stream.name) or purge this "
            f"bridge's subjects from {stream_name} (`nats stream purge {stream_name} "
            "--subject ...`) once consumers have what they need)"
        )
    if not tail.complete:
        log.warning(
            "stream_tail_incomplete",
            stream=stream_name,
            error=f"read {tail.scanned} messages back without reaching the slot's position; "
            "events stored before that may be published again if the duplicate window passed",
        )


def dead_letter_not_stored(problem: str) -> str:
    """The fatal line for a dead-letter subject no stream stores, with its fix."""
    return (
        f"{problem} (fix: add dead_letter.subject to nats.stream.subjects before the "
        "stream exists, or to an existing stream's subjects (`nats stream edit`), or "
        "set dead_letter.subject inside a stream's subjects)"
    )


async def check_subjects_have_streams(
    nc: NatsClient, config: BridgeConfig, state: BridgeState
) -> None:
    """A dead-letter subject no stream stores is fatal; a route's is worth a warning.

    A route's rows still go somewhere safe (the publisher dead-letters what no stream
    captures), but poison rows with nowhere to go would stop the bridge later anyway.
    """
    for problem in await check_stream_coverage(nc, config):
        if problem.startswith("dead_letter."):
            raise FatalError(dead_letter_not_stored(problem))
        if not state.warned_uncovered_routes:
            log.warning("route_not_stored", error=problem)
    state.warned_uncovered_routes = True


def warn_about_duplicate_window(config: BridgeConfig, info: StreamInfo, state: BridgeState) -> None:
    window = info.config.duplicate_window or 0.0
    needed = config.postgres.status_interval + config.nats.ack_timeout
    if window < needed and not state.warned_duplicate_window:
        state.warned_duplicate_window = True
        log.warning(
            "duplicate_window_short",
            stream=info.config.name,
            error=f"the stream's duplicate_window ({window:g}s) is shorter than "
            f"postgres.status_interval + nats.ack_timeout ({needed:g}s); replays are still "
            "skipped by reading the stream's tail, but a wider window is a cheap safety net",
        )
