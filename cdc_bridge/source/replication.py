"""The replication connection: the only module that talks to libpq directly.

psycopg 3 has no replication API, but since 3.3 ``START_REPLICATION`` on a
``replication="database"`` connection leaves it in COPY_BOTH state. From there we
drive ``conn.pgconn`` ourselves: read CopyData with ``get_copy_data(1)`` (non-blocking)
until it returns 0, only then ``consume_input`` (and wait for the socket when that brings
nothing). Calling ``consume_input`` before every read makes libpq shift its whole
buffered backlog each time, which turns quadratic once the reader falls behind.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.source.protocol import build_status_update

# Notice a silently dead peer (a cut network never sends RST) within about half a
# minute; a user's DSN settings win over these.
_CONNECTION_DEFAULTS = {
    "application_name": "cdc-bridge",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

# Asked of the server for our sessions: it drops a vanished peer (machine loss, network
# cut) in about 5 s, so its walsender frees the slot, and its lock session the
# leadership, for a standby to take over. Any role may set these for its own session.
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=5000"
)


class ReplicationError(Exception):
    """The stream ended or failed. ``error`` is psycopg's error for what the server said,
    when it said something: its class names the SQLSTATE (AdminShutdown, ObjectInUse,
    InsufficientPrivilege ...), which is how the supervisor tells fatal from transient."""

    def __init__(self, message: str, error: psycopg.Error | None = None) -> None:
        super().__init__(message)
        self.error = error

    @classmethod
    def from_error(cls, error: psycopg.Error) -> ReplicationError:
        """The server's error as ours: SlotInUse when another process streams the slot."""
        kind = SlotInUse if isinstance(error, pg_errors.ObjectInUse) else cls
        return kind(_first_line(error), error)


class SlotInUse(ReplicationError):
    """Another process streams from the slot: wait and retry, do not crash."""


def connection_string(dsn: str, connect_timeout: float, *, options: str | None = None) -> str:
    """The user's DSN with our defaults added where it does not set them itself.

    Every other parameter is kept as the user wrote it: the TLS ones (sslmode,
    sslrootcert, sslcert, sslkey, sslpassword ...) work through the DSN alone.
    """
    params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    for key, value in _CONNECTION_DEFAULTS.items():
        params.setdefault(key, value)
    params.setdefault("connect_timeout", str(max(int(connect_timeout), 1)))
    if options:
        params["options"] = f"{params['options']} {options}" if params.get("options") else options
    return make_conninfo("", **params)


def server_address(dsn: str) -> str:
    """``host:port`` of the DSN's server (each, for a multi-host DSN): never its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable postgres.dsn)"  # libpq's error would quote the DSN
    # What libpq falls back to (its PG* variables, then its defaults)
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST")
    hosts = str(host or "localhost").split(",")
    ports = str(params.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return ",".join(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for host, port in zip(hosts, ports, strict=False)
    )


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_option(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def start_replication_command(slot: str, start_lsn: int, options: Sequence[tuple[str, str]]) -> str:
    """``START_REPLICATION`` with every name quoted, as pg_recvlogical writes it.

    Option names must be quoted identifiers anyway (wal2json's ``format-version`` has a
    hyphen, which the replication grammar refuses unquoted). The slot name is checked where
    it is configured, but quoting it here keeps the command right whatever reaches it.
    """
    opts = ", ".join(f"{quote_name(name)} {quote_option(value)}" for name, value in options)
    return f"START_REPLICATION SLOT {quote_name(slot)} LOGICAL {format_lsn(start_lsn)} ({opts})"


class ReplicationStream:
    """A logical replication stream in COPY_BOTH mode."""

    def __init__(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        self._conn = conn
        self._pg = conn.pgconn
        self._loop = asyncio.get_running_loop()
        self._fd = self._pg.socket
        self._closed = False
        # From IDENTIFY_SYSTEM. The system identifier is the same on a primary and its
        # physical standbys (what keeps Cdc-Source stable across a failover); the
        # timeline grows by one at each promotion.
        self.system_id = ""
        self.timeline = 0

    @property
    def address(self) -> tuple[str, str]:
        """(host, port) of the server libpq chose among the hosts of a multi-host DSN."""
        return self._conn.info.host, str(self._conn.info.port)

    @property
    def server(self) -> str:
        """``host:port`` of that server: for messages."""
        return ":".join(self.address)

    @classmethod
    async def connect(
        cls, dsn: str, *, connect_timeout: float = 10.0, password: str | None = None
    ) -> ReplicationStream:
        """Open a replication connection and identify the server (not streaming yet).

        ``password`` (from postgres.password_file) goes to libpq as a parameter of its
        own, never into a DSN string.
        """
        conn = await psycopg.AsyncConnection.connect(
            connection_string(dsn, connect_timeout, options=SERVER_KEEPALIVES),
            replication="database",
            autocommit=True,
            password=password,  # None: left out (psycopg drops None parameters)
        )
        try:
            cur = await conn.execute("IDENTIFY_SYSTEM")
            row = await cur.fetchone()
        except psycopg.Error as exc:
            await conn.close()
            raise ReplicationError.from_error(exc) from None
        stream = cls(conn)
        stream.system_id = str(row[0]) if row else "unknown"
        stream.timeline = int(row[1]) if row else 0
        return stream

    async def enable_failover(self, slot: str) -> None:
        """Make an existing slot a failover slot (PostgreSQL 17+; before START_REPLICATION).

        Only the replication protocol can alter a slot: there is no SQL function for it.
        Raises psycopg.Error when the server refuses (the slot is in use, or not ours).
        """
        await self._conn.execute(f"ALTER_REPLICATION_SLOT {quote_name(slot)} (FAILOVER true)")

    async def start(
        self, *, slot: str, options: Sequence[tuple[str, str]], start_lsn: int = 0
    ) -> None:
        """Start streaming.

        ``start_lsn`` 0 lets the server resume from the slot's ``confirmed_flush_lsn``:
        the only safe place to resume. Never pass the current WAL position.
        """
        command = start_replication_command(slot, start_lsn, options)
        try:
            await self._conn.execute(command)
        except psycopg.Error as exc:
            await self.close()
            raise ReplicationError.from_error(exc) from None
        if self._pg.status != pq.ConnStatus.OK:
            await self.close()
            raise ReplicationError("replication connection is not usable after START_REPLICATION")
        self._pg.nonblocking = 1

    async def read_batch(self, max_messages: int = 2000) -> list[bytes]:
        """Wait for at least one CopyData message; return all that are already buffered.

        When libpq's buffer runs dry the socket is read once more without waiting
        (libpq reads at most its buffer's free space, 16 KiB at first, per call): a
        backlog then comes in batches of up to ``max_messages`` instead of a trip
        through the event loop per 16 KiB, and the publisher flushes fewer, larger writes.
        """
        pg = self._pg
        batch: list[bytes] = []
        socket_read = False  # consume_input was called since the buffer last ran dry
        while True:
            try:
                nbytes, data = pg.get_copy_data(1)
                if nbytes > 0:
                    batch.append(bytes(data))
                    if len(batch) >= max_messages:
                        return batch
                    socket_read = False
                    continue
                if nbytes < 0:
                    raise self._stream_end_error()
                if not socket_read:
                    pg.consume_input()  # non-blocking: whatever the socket holds now
                    socket_read = True
                    continue
                if batch:
                    return batch
                await self._wait_readable()
                pg.consume_input()
            except psycopg.OperationalError as exc:
                raise ReplicationError(f"replication connection lost: {_first_line(exc)}") from None

    async def _wait_readable(self) -> None:
        """Until the socket has something to read.

        The socket is watched only while waiting: watched all the time, a socket holding
        unread data (a backlog, while the pipeline waits for its acks) would wake the
        event loop on every iteration, a busy loop burning a core that nats-server and
        the walsender need.
        """
        loop = self._loop
        readable = loop.create_future()
        loop.add_reader(self._fd, _set_done, readable)
        try:
            await readable
        finally:
            if not self._closed:
                loop.remove_reader(self._fd)

    def send_status(self, write: int, flush: int, *, reply_requested: bool = False) -> None:
        """Standby status update. Only ``flush`` moves the slot's confirmed_flush_lsn."""
        message = build_status_update(write, flush, flush, reply_requested=reply_requested)
        try:
            self._pg.put_copy_data(message)
            if self._pg.flush() == 1:
                self._loop.create_task(self._flush_when_writable())
        except psycopg.OperationalError as exc:
            raise ReplicationError(f"replication connection lost: {_first_line(exc)}") from None

    async def _flush_when_writable(self) -> None:
        writable = asyncio.Event()
        self._loop.add_writer(self._fd, writable.set)
        try:
            while not self._closed:
                await writable.wait()
                writable.clear()
                if self._pg.flush() == 0:
                    return
        except psycopg.OperationalError:
            return  # the reader sees the broken connection and reports it
        finally:
            self._loop.remove_writer(self._fd)

    async def finish(self, write: int, flush: int, timeout: float = 5.0) -> None:
        """Clean end: final status update, then CopyDone, then wait for the server's end."""
        try:
            self.send_status(write, flush)
            self._pg.put_copy_end()
            self._pg.flush()
            async with asyncio.timeout(timeout):
                while True:
                    nbytes, _ = self._pg.get_copy_data(1)
                    if nbytes == -1:
                        break
                    if nbytes == 0:
                        await self._wait_readable()
                        self._pg.consume_input()
        except (psycopg.OperationalError, ReplicationError, TimeoutError):
            pass  # closing anyway; the status update was already on the wire
        finally:
            await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)  # no-op unless a read is waiting for the socket
        await self._conn.close()

    def _stream_end_error(self) -> ReplicationError:
        result = self._pg.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            # psycopg's own class for the server's SQLSTATE (AdminShutdown on a fast
            # shutdown, ObjectInUse, ...), as it would raise for any query
            return ReplicationError.from_error(pg_errors.error_from_result(result))
        return ReplicationError("the server ended the replication stream")


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
