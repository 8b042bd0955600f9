"""A tiny HTTP/1.1 endpoint for probes, status and metrics.

Four GET routes do not justify a web framework: this answers one request per
connection from asyncio streams, on the bridge's own event loop (so /healthz
answering at all proves the loop is turning).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog

from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.bridge.status import BridgeStatus

log = structlog.get_logger("cdc_bridge.bridge.http")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HttpEndpoint:
    def __init__(
        self, host: str, port: int, status: BridgeStatus, metrics: Metrics, stall_timeout: float
    ) -> None:
        self._host = host
        self._port = port
        self._status = status
        self._metrics = metrics
        self._stall_timeout = stall_timeout
        self._server: asyncio.Server | None = None
        metrics.ready.set_function(lambda: 0.0 if status.readiness(stall_timeout) else 1.0)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("http_listening", address=f"{self._host}:{self.port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing here needs them
            parts = request_line.decode("latin-1").split()
            status, content_type, body = self._respond(parts)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _respond(self, parts: list[str]) -> tuple[int, str, bytes]:
        if len(parts) < 2:
            return _json(405, {"error": "bad request"})
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return _json(405, {"error": "only GET is supported"})
        if target == "/healthz":
            return _json(200, {"status": "alive"})
        if target == "/readyz":
            reason = self._status.readiness(self._stall_timeout)
            if reason is None:
                return _json(200, {"status": "ready"})
            return _json(503, {"status": "not ready", "reason": reason})
        if target == "/status":
            return _json(200, self._status.to_json())
        if target == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST  # only a bridge with HTTP needs it

            return 200, CONTENT_TYPE_LATEST, self._metrics.render()
        return _json(404, {"error": f"no such endpoint: {target}"})


def _json(status: int, payload: object) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(payload).encode() + b"\n"
