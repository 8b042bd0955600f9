"""What the stream already holds: read at the start of every session.

After a restart PostgreSQL replays everything after the slot's ``confirmed_flush_lsn``.
Some of it JetStream may already have stored (acked, but the confirmation had not yet
reached PostgreSQL). ``Nats-Msg-Id`` deduplication hides those replays only inside the
stream's ``duplicate_window``; a restart after a longer outage would store them twice.

The order guard (see ordering.py) means this bridge's messages in its stream are a
gap-free prefix of what it sent, in send order. So a replayed event bound for the
stream is stored exactly when its position (commit LSN, index in its transaction) is
at or before the newest stored position. Finding that position needs only the last
few of our messages: the highest can sit up to one in-flight window before the end,
because a dead letter that replaces a refused message is sent late.

With a subject space (``nats.subject_space``, NATS 2.11+) the walk reads only the
space: JetStream finds the space's last message and each next one within a range of
sequences (its subject index), so other writers' messages cost nothing here, however
busy they are. The walk goes back in ranges that double, one read per message of ours
and one per range. A message in the space from another ``Cdc-Source`` means two bridges
share the space, and would break each other's order expectations: refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.headers import REPLAY_HEADER
from cdc_bridge.core.lsn import parse_lsn

Position = tuple[int, int]  # (commit LSN, index of the event in its transaction)

_BATCH = 256  # reads in flight at once
# A stream written mostly by others could make the walk long: give up (and say so) here.
MAX_SCANNED = 200_000
_FIRST_RANGE = 1024  # stream sequences the walk of a subject space reads back at first
_WALKS = 16  # parts of a range walked side by side
_WALK_PART = 64  # a range this narrow is walked alone


@dataclass(frozen=True)
class StreamTail:
    last_seq: int  # the stream's last sequence when the session started
    newest: Position | None  # our highest stored position, None when none was found
    scanned: int
    complete: bool  # False when MAX_SCANNED ended the walk early
    stream_last_seq: int = 0  # the stream's, when last_seq is the subject space's


async def read_stream_tail(
    js: JetStreamContext, stream: str, source: str, since_lsn: int, lookback: int
) -> StreamTail:
    """Our highest stored position among the last ``lookback`` of our messages.

    The walk also ends at the first of our messages from before ``since_lsn``:
    everything older is already confirmed in the slot and is never replayed.
    """
    info = await js.stream_info(stream)
    state = info.state
    newest: Position | None = None
    ours = 0
    scanned = 0
    seq = state.last_seq
    first = max(state.first_seq, 1)
    while seq >= first and state.messages:
        low = max(first, seq - _BATCH + 1)
        batch = await asyncio.gather(*(_headers(js, stream, s) for s in range(seq, low - 1, -1)))
        for headers in batch:
            scanned += 1
            position = None if headers is None else position_of(headers, source)
            if position is None:
                continue
            if newest is None or position > newest:
                newest = position
            ours += 1
            if position[0] < since_lsn or ours >= lookback:
                return StreamTail(state.last_seq, newest, scanned, complete=True)
        if scanned >= MAX_SCANNED:
            return StreamTail(state.last_seq, newest, scanned, complete=False)
        seq = low - 1
    return StreamTail(state.last_seq, newest, scanned, complete=True)


async def read_space_tail(
    js: JetStreamContext,
    stream: str,
    space: str,
    source: str,
    since_lsn: int,
    lookback: int,
) -> StreamTail:
    """``read_stream_tail`` within ``space``: ``last_seq`` is the space's last sequence
    (0 when it holds nothing), the sequence the order guard's first message names."""
    info = await js.stream_info(stream)
    first = max(info.state.first_seq, 1)
    try:
        last = (await js.get_msg(stream, subject=space)).seq or 0
    except NotFoundError:
        return StreamTail(0, None, 0, complete=True, stream_last_seq=info.state.last_seq)
    newest: Position | None = None
    ours = scanned = 0
    high, width = last, _FIRST_RANGE
    while high >= first:
        low = max(first, high - width + 1)
        for headers in reversed(await _space_range(js, stream, space, low, high)):
            scanned += 1
            position = _ours_in_space(headers, source, space, stream)
            if position is None:
                continue  # not a bridge's message (no Cdc-Source)
            if newest is None or position > newest:
                newest = position
            ours += 1
            if position[0] < since_lsn or ours >= lookback:
                return StreamTail(last, newest, scanned, True, info.state.last_seq)
        if scanned >= MAX_SCANNED:
            return StreamTail(last, newest, scanned, False, info.state.last_seq)
        high, width = low - 1, width * 2
    return StreamTail(last, newest, scanned, True, info.state.last_seq)


async def _space_range(
    js: JetStreamContext, stream: str, space: str, low: int, high: int
) -> list[dict[str, str]]:
    """The headers of the messages within ``space`` at sequences ``low``..``high``, in
    order. Each read finds the next message in the space, so one walk is one round trip
    per message: the range is cut into parts walked side by side (a busy space, or one
    full of replayed rows, took tens of seconds walked alone on a loaded machine)."""
    width = high - low + 1
    if width <= _WALK_PART:
        return await _walk_space(js, stream, space, low, high)
    step = -(-width // _WALKS)  # ceil
    parts = await asyncio.gather(
        *(
            _walk_space(js, stream, space, start, min(start + step - 1, high))
            for start in range(low, high + 1, step)
        )
    )
    return [headers for part in parts for headers in part]


async def _walk_space(
    js: JetStreamContext, stream: str, space: str, low: int, high: int
) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    seq = low
    while seq <= high:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=space, next=True)
        except NotFoundError:
            break
        if msg.seq is None or msg.seq > high:
            break
        found.append(msg.headers or {})
        seq = msg.seq + 1
    return found


def _ours_in_space(
    headers: Mapping[str, str], source: str, space: str, stream: str
) -> Position | None:
    other = headers.get("Cdc-Source")
    if other is None:
        return None  # not a bridge's message
    if other == source:
        return position_of(headers, source)  # None for a replayed row (Cdc-Replay)
    raise FatalError(
        f"stream {stream} holds messages of bridge {other} inside nats.subject_space "
        f"{space!r} of this bridge ({source}): two bridges in one space break each "
        "other's order (fix: give each bridge its own nats.subject_space)"
    )


def position_of(headers: Mapping[str, str], source: str) -> Position | None:
    """Where in the WAL a message of ours came from; None for another source's message,
    and for one republished by `outbox replay` or a slot recovery (``Cdc-Replay``): those
    have no place in the commit order the stream's tail is read by."""
    if headers.get("Cdc-Source") != source or REPLAY_HEADER in headers or "Cdc-Lsn" not in headers:
        return None
    return parse_lsn(headers["Cdc-Lsn"]), int(headers.get("Cdc-Index", "0"))


async def newest_source(
    js: JetStreamContext, stream: str, space: str | None = None
) -> tuple[str, int] | None:
    """The ``Cdc-Source`` and ``Cdc-Lsn`` of the stream's last message (within ``space``
    when given: other bridges write outside it), if it has them."""
    if space is not None:
        try:
            headers: dict[str, str] | None = (await js.get_msg(stream, subject=space)).headers
        except NotFoundError:
            return None
    else:
        info = await js.stream_info(stream)
        if not info.state.messages:
            return None
        headers = await _headers(js, stream, info.state.last_seq)
    if not headers or "Cdc-Source" not in headers or "Cdc-Lsn" not in headers:
        return None
    return headers["Cdc-Source"], parse_lsn(headers["Cdc-Lsn"])


async def _headers(js: JetStreamContext, stream: str, seq: int) -> dict[str, str] | None:
    try:
        msg = await js.get_msg(stream, seq=seq)
    except NotFoundError:
        return None  # deleted or expired: a gap in the sequence
    return msg.headers or {}
