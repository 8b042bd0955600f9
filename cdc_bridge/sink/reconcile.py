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
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cdc_bridge.core.headers import REPLAY_HEADER
from cdc_bridge.core.lsn import parse_lsn

Position = tuple[int, int]  # (commit LSN, index of the event in its transaction)

_BATCH = 256  # reads in flight at once
# A stream written mostly by others could make the walk long: give up (and say so) here.
MAX_SCANNED = 200_000


@dataclass(frozen=True)
class StreamTail:
    last_seq: int  # the stream's last sequence when the session started
    newest: Position | None  # our highest stored position, None when none was found
    scanned: int
    complete: bool  # False when MAX_SCANNED ended the walk early


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


def position_of(headers: Mapping[str, str], source: str) -> Position | None:
    """Where in the WAL a message of ours came from; None for another source's message,
    and for one republished by `outbox replay` or a slot recovery (``Cdc-Replay``): those
    have no place in the commit order the stream's tail is read by."""
    if headers.get("Cdc-Source") != source or REPLAY_HEADER in headers or "Cdc-Lsn" not in headers:
        return None
    return parse_lsn(headers["Cdc-Lsn"]), int(headers.get("Cdc-Index", "0"))


async def newest_source(js: JetStreamContext, stream: str) -> tuple[str, int] | None:
    """The ``Cdc-Source`` and ``Cdc-Lsn`` of the stream's last message, if it has them."""
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
