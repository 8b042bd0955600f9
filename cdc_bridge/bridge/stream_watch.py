"""The watch on the stream while the bridge runs: one STREAM.INFO every status interval,
judged by sink/stream_loss.py. What was seen lives in BridgeState, so a session that
starts after a lost connection (nats-server restarted on an empty store, say) is
judged against the stream the previous one saw, before anything creates it again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError

from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.sink.coverage import route_subject_filter
from cdc_bridge.sink.stream_loss import (
    StreamLook,
    StreamLost,
    StreamSeen,
    first_seen,
    lost_window,
    stream_loss,
)

if TYPE_CHECKING:
    from cdc_bridge.bridge.session import BridgeState
    from cdc_bridge.config.model import BridgeConfig

REPAIR = (
    "repair: make sure stream {stream} stores nats.stream.subjects (`cdc-bridge init "
    "--config FILE` creates a missing one), run `cdc-bridge audit --config FILE`, then "
    "`cdc-bridge outbox replay --config FILE --missing`"
)


def look_of(info: StreamInfo) -> StreamLook:
    return StreamLook(info.created, info.state.last_seq, tuple(info.config.subjects or ()))


async def look_at_stream(nc: NatsClient, name: str, timeout: float) -> StreamLook | None:
    """One STREAM.INFO; None when the stream does not exist."""
    try:
        return look_of(await nc.jsm(timeout=timeout).stream_info(name))
    except NotFoundError:
        return None


def published_subjects(config: BridgeConfig) -> list[tuple[str, str]]:
    """(config key, subject filter) of everything the bridge publishes to."""
    published = [
        (f"routes[{index}].subject", route_subject_filter(route.subject))
        for index, route in enumerate(config.routes)
    ]
    if config.dead_letter is not None:
        published.append(("dead_letter.subject", config.dead_letter.subject))
    return published


def remember_stream(config: BridgeConfig, info: StreamInfo, state: BridgeState) -> None:
    """What this session's stream is: what later looks are compared with."""
    name = config.nats.stream.name
    state.stream_seen = first_seen(name, look_of(info), published_subjects(config))


def judge(
    seen: StreamSeen, look: StreamLook | None, confirmed: int | None, state: BridgeState
) -> StreamSeen:
    """``seen`` moved on, or StreamLost raised with the one line that says what
    happened, what is at risk and how to repair it."""
    what = stream_loss(seen, look)
    if what is None:
        return seen if look is None else seen.after(look)
    state.metrics.stream_lost.inc()
    slot = (
        f"; the slot is confirmed through LSN {format_lsn(confirmed)} (a restart resends "
        "only what came after it)"
        if confirmed is not None
        else ""
    )
    raise StreamLost(
        f"{what} while the bridge ran: {lost_window(seen, look)}{slot}. The bridge stops "
        "without confirming more and does not re-create the stream; "
        + REPAIR.format(stream=seen.name)
    )


async def check_stream_again(nc: NatsClient, config: BridgeConfig, state: BridgeState) -> None:
    """At the start of a session after another one: the stream the process saw before
    must still be there, unchanged, before ensure_stream could create it again."""
    seen = state.stream_seen
    if seen is None or seen.name != config.nats.stream.name:
        return
    look = await look_at_stream(nc, seen.name, config.nats.ack_timeout)
    progress = state.status.progress
    state.stream_seen = judge(seen, look, progress.confirmed() if progress else None, state)


async def watch_stream(
    nc: NatsClient, config: BridgeConfig, state: BridgeState, confirmed: Callable[[], int]
) -> None:
    """Look at the stream every status interval, for the whole session (cancelled at
    its end); raises StreamLost. The pipeline confirms nothing once this task is done
    (see Pipeline's ``halt``), so the slot stays where the loss found it."""
    interval = config.postgres.status_interval
    while True:
        await asyncio.sleep(interval)
        seen = state.stream_seen
        if seen is None:
            continue  # prepare_nats sets it before any session streams
        try:
            look = await look_at_stream(nc, seen.name, max(interval, config.nats.ack_timeout))
        except (nats.errors.Error, TimeoutError):
            continue  # a lost connection ends the session on its own; look again then
        state.stream_seen = judge(seen, look, confirmed(), state)
