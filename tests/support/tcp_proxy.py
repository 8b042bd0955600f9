"""A loopback TCP forwarder that can cut, stall or refuse connections on demand.

Put it between the bridge and a server to simulate the network failing while both ends stay
up: ``cut()`` resets every open connection (SO_LINGER 0, so the peers see RST, not a polite
FIN), ``pause()`` stops forwarding bytes without closing anything (a silent partition),
``block()`` resets new connections as soon as they are accepted (the server "unreachable").

The proxy runs its own asyncio loop in a daemon thread so that synchronous tests can drive it;
every public method is thread-safe and returns once the loop has done the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cdc_bridge.dev.processes import Service

T = TypeVar("T")

_CHUNK = 64 * 1024
_CALL_TIMEOUT = 10.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # l_onoff=1, l_linger=0: close() sends RST


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream twin."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: RST instead of FIN, pending bytes dropped."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class TcpProxy(Service):
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0  # known after start()
        self.accepted_total = 0
        self.cut_total = 0
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None  # created on the proxy's loop
        self._blocked = False
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tcp-proxy-{upstream_port}", daemon=True
        )

    # -- lifecycle --

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            self._call(self._shut_down)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CALL_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    # -- faults --

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return self._call(self._count_links)

    def cut(self) -> int:
        """Reset every open connection (both sides); new ones are still accepted.
        Returns how many were cut."""
        return self._call(self._cut_all)

    def pause(self) -> None:
        """Stop forwarding in both directions; connections stay open (a silent partition)."""
        self._call(self._set_flowing, False)

    def resume(self) -> None:
        self._call(self._set_flowing, True)

    def block(self) -> None:
        """Reset every new connection as soon as it is accepted; open ones are untouched."""
        self._blocked = True

    def unblock(self) -> None:
        self._blocked = False

    # -- the proxy's loop --

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_total += 1
        if self._blocked:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            _reset(writer)  # the server is down: the client sees a reset, as a refusal would
            return
        link = _Link(client=writer, upstream=up_writer)
        self._links.add(link)
        link.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(
        self, source: asyncio.StreamReader, target: asyncio.StreamWriter, link: _Link
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await source.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                target.write(data)
                await target.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side ended: end both, the way a real connection would look to each peer
            self._drop(link, abrupt=False)

    def _drop(self, link: _Link, *, abrupt: bool) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            if abrupt:
                _reset(writer)
            else:
                writer.close()
        current = asyncio.current_task()
        for pump in link.pumps:
            if pump is not current:
                pump.cancel()

    async def _cut_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._drop(link, abrupt=True)
        self.cut_total += len(links)
        return len(links)

    async def _count_links(self) -> int:
        return len(self._links)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _shut_down(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._drop(link, abrupt=True)

    def _call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: object) -> T:
        future = asyncio.run_coroutine_threadsafe(function(*args), self._loop)
        return future.result(_CALL_TIMEOUT)
