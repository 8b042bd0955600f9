"""Hot standby: a PostgreSQL session advisory lock per slot decides who streams.

Every bridge with the same config tries the same lock; the holder streams, the others
wait and never touch the slot. The lock lives as long as the holder's session, so it
is released the moment the holder's connection ends. For a holder that vanishes
without closing its socket (machine loss, network cut), the lock connection asks the
server for aggressive TCP keepalives and a user timeout, so the server drops it, and
the lock, within seconds instead of the kernel's default two hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import psycopg
from psycopg.rows import TupleRow

from cdc_bridge.source.replication import SERVER_KEEPALIVES, connection_string


def lock_key(slot: str) -> int:
    """A stable signed 64-bit advisory lock key for the slot."""
    digest = hashlib.sha256(f"cdc-bridge:{slot}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LeadershipLost(Exception):
    """The lock session ended: another bridge may be streaming now."""


class Leadership:
    def __init__(
        self, dsn: str, slot: str, connect_timeout: float, *, password: str | None = None
    ) -> None:
        self._dsn = dsn
        self._password = password  # postgres.password_file's: a libpq parameter of its own
        self._key = lock_key(slot)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None

    async def try_acquire(self) -> bool:
        """One attempt; connection errors propagate (the caller backs off)."""
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                connection_string(self._dsn, self._connect_timeout, options=SERVER_KEEPALIVES),
                autocommit=True,
                password=self._password,
            )
        cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def hold(self, interval: float = 2.0) -> None:
        """Return never while the lock is held; raise LeadershipLost when it is not."""
        conn = self._conn
        if conn is None:
            raise LeadershipLost("no lock session")
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(interval * 3):
                    await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as exc:
                raise LeadershipLost(f"the leadership lock session ended: {exc}") from None

    async def still_held(self, timeout: float = 2.0) -> bool:
        """Is the lock session alive? Asked before retrying a failed session: after a
        PostgreSQL restart the lock is gone, and streaming again would race a standby."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            async with asyncio.timeout(timeout):
                await conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError):
            return False
        return True

    async def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()  # ending the session releases the lock
            self._conn = None
