"""The streaming replication protocol's CopyData messages (pure: bytes in, values out).

Inside ``START_REPLICATION`` every CopyData message starts with a one-byte kind:

- ``w`` XLogData from the server: data_start(8) wal_end(8) send_time(8) + payload
- ``k`` primary keepalive from the server: wal_end(8) send_time(8) reply_requested(1)
- ``r`` standby status update from us: write(8) flush(8) apply(8) send_time(8)
  reply_requested(1)

All integers are big-endian; LSNs are unsigned, timestamps are signed microseconds since
2000-01-01 UTC (PostgreSQL's epoch). ``parse_copy_data`` runs once per WAL message, so it
uses precompiled ``Struct`` objects and does no more than one length check per call.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000
"""Microseconds between the Unix epoch (1970-01-01) and PostgreSQL's (2000-01-01), UTC."""

_XLOG_DATA_HEADER = struct.Struct(">QQq")  # data_start, wal_end, send_time
_KEEPALIVE_BODY = struct.Struct(">QqB")  # wal_end, send_time, reply_requested
_STATUS_UPDATE = struct.Struct(">cQQQqB")  # 'r', write, flush, apply, send_time, reply

XLOG_DATA_KIND = ord("w")
_KEEPALIVE_KIND = ord("k")
XLOG_PAYLOAD_START = 1 + _XLOG_DATA_HEADER.size  # 25
_WAL_END = struct.Struct(">Q")
_WAL_END_OFFSET = 9
_KEEPALIVE_SIZE = 1 + _KEEPALIVE_BODY.size  # 18


class ProtocolError(Exception):
    """A CopyData message that is not a well-formed XLogData or keepalive."""


@dataclass(frozen=True, slots=True)
class XLogData:
    data_start: int  # WAL position of the payload's record
    wal_end: int  # the server's current end of WAL
    send_time: int  # microseconds since 2000-01-01 UTC
    payload: bytes  # the output plugin's message (pgoutput / wal2json)


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int
    send_time: int
    reply_requested: bool  # answer at once, or wal_sender_timeout may end the connection


def parse_copy_data(message: bytes | bytearray | memoryview) -> XLogData | Keepalive:
    """Parse one CopyData message received during replication.

    Accepts the ``memoryview`` that psycopg's ``PGconn.get_copy_data`` returns as well as
    ``bytes``; the XLogData payload is always returned as ``bytes``.
    Raises ProtocolError for an unknown kind or a message too short for its kind.
    """
    if not message:
        raise ProtocolError("empty CopyData message")
    kind = message[0]
    if kind == XLOG_DATA_KIND:
        if len(message) < XLOG_PAYLOAD_START:
            raise ProtocolError(
                f"XLogData message too short: {len(message)} bytes, "
                f"header needs {XLOG_PAYLOAD_START}"
            )
        data_start, wal_end, send_time = _XLOG_DATA_HEADER.unpack_from(message, 1)
        payload = message[XLOG_PAYLOAD_START:]
        if type(payload) is not bytes:
            payload = bytes(payload)
        return XLogData(data_start, wal_end, send_time, payload)
    if kind == _KEEPALIVE_KIND:
        # Longer than expected is tolerated (a future server may append fields);
        # shorter means we would read garbage.
        if len(message) < _KEEPALIVE_SIZE:
            raise ProtocolError(
                f"keepalive message too short: {len(message)} bytes, needs {_KEEPALIVE_SIZE}"
            )
        wal_end, send_time, reply_requested = _KEEPALIVE_BODY.unpack_from(message, 1)
        return Keepalive(wal_end, send_time, reply_requested != 0)
    raise ProtocolError(f"unknown CopyData message kind {bytes([kind])!r}")


def xlog_wal_end(message: bytes) -> int:
    """``wal_end`` of an XLogData message the caller has checked (kind ``w``, long enough).

    The reader's fast path: it takes the payload as ``message[XLOG_PAYLOAD_START:]``
    itself and needs only this field, so no XLogData object is built per change.
    """
    wal_end: int = _WAL_END.unpack_from(message, _WAL_END_OFFSET)[0]
    return wal_end


def pg_now() -> int:
    """The current time in PostgreSQL's form: microseconds since 2000-01-01 UTC."""
    return time.time_ns() // 1000 - PG_EPOCH_OFFSET_US


def build_status_update(
    write: int,
    flush: int,
    apply: int,
    *,
    send_time: int | None = None,
    reply_requested: bool = False,
) -> bytes:
    """Build the 34-byte ``r`` standby status update.

    Only ``flush`` moves the slot's ``confirmed_flush_lsn``; ``write`` and ``apply`` are
    reported for monitoring. ``send_time`` defaults to now.
    Raises ValueError if an LSN is not an unsigned 64-bit integer.
    """
    if send_time is None:
        send_time = pg_now()
    try:
        return _STATUS_UPDATE.pack(b"r", write, flush, apply, send_time, int(reply_requested))
    except struct.error as exc:
        raise ValueError(
            f"status update fields out of range (write={write}, flush={flush}, "
            f"apply={apply}, send_time={send_time}): {exc}"
        ) from exc
