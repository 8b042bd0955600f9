"""What the stream already holds: read at the start of every session.

After a restart PostgreSQL replays everything after the slot's ``confirmed_flush_lsn``.
Some of it JetStream may already have stored (acked, but the confirmation had not yet
reached PostgreSQL). ``Nats-Msg-Id`` deduplication hides those replays only inside the
stream's ``duplicate_window``; a restart after a longer outage would store them twice.
So each session reads the stream's tail back to the confirmed position and collects
the positions (commit LSN, index in transaction) of this bridge's stored events; the
pipeline skips exactly those.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cdc_bridge.lsn import parse_lsn

Position = tuple[int, int]  # (commit LSN, index of the event in its transaction)

# Each read is one request; keep a bounded number in flight.
_BATCH = 256
# A stream written mostly by others could make the walk long: give up (and say so) here.
MAX_SCANNED = 200_000


@dataclass
class StreamTail:
    last_seq: int  # the stream's last sequence when the session started
    stored: set[Position] = field(default_factory=set)  # our events at or after `since`
    newest: Position | None = None  # our newest stored event, anywhere in the stream
    scanned: int = 0
    complete: bool = True  # False when MAX_SCANNED stopped the walk early


async def read_stream_tail(
    js: JetStreamContext, stream: str, source: str, since_lsn: int
) -> StreamTail:
    """Walk back from the stream's end collecting our events with commit LSN >= since."""
    info = await js.stream_info(stream)
    state = info.state
    tail = StreamTail(last_seq=state.last_seq)
    seq = state.last_seq
    first = max(state.first_seq, 1)
    while seq >= first and state.messages:
        low = max(first, seq - _BATCH + 1)
        results = await asyncio.gather(
            *(_get(js, stream, s) for s in range(seq, low - 1, -1))
        )
        for headers in results:
            tail.scanned += 1
            if headers is None or headers.get("Cdc-Source") != source:
                continue
            position = (parse_lsn(headers["Cdc-Lsn"]), int(headers.get("Cdc-Index", "0")))
            if tail.newest is None:
                tail.newest = position
            if position[0] < since_lsn:
                return tail
            tail.stored.add(position)
        if tail.scanned >= MAX_SCANNED:
            tail.complete = False
            return tail
        seq = low - 1
    return tail


async def _get(js: JetStreamContext, stream: str, seq: int) -> dict[str, str] | None:
    try:
        msg = await js.get_msg(stream, seq=seq)
    except NotFoundError:
        return None  # deleted or expired: a gap in the sequence
    return msg.headers or {}
