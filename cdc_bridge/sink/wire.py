"""HPUB frames, built once and handed to nats-py's pending buffer in one piece.

nats-py's own ``publish`` costs more per message than everything else the bridge does
(header checks and encoding, a flusher wake-up per call). So the publisher builds each
frame itself, here, and gives a whole batch to the client as one write, in order with
the client's own commands (SUB, PING). That takes two private methods of nats-py's
``Client``, ``_send_command`` and ``_flush_pending``: this module is the only place that
uses them, nats-py is pinned to a minor version range in pyproject.toml, and
tests/unit/test_nats_private_api.py fails loudly when an upgrade changes them.
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from cdc_bridge.sink.ack_book import NO_REPLY

_CRLF = b"\r\n"
BLOCK_START = "NATS/1.0\r\n"  # a header block's first line


def header_block(header_lines: str, expectation: str) -> bytes:
    """The NATS/1.0 header block: ``header_lines`` then the order guard's line, if any."""
    return f"NATS/1.0\r\n{header_lines}{expectation}\r\n".encode()


_BLOCK_OVERHEAD = len(BLOCK_START) + 2  # the first line, and the blank line that ends it


class Frames:
    """The HPUB frames queued for the next write, each as four parts (the HPUB line, the
    header block, the payload, CRLF), or three with ``add_lines`` (the first two as one).

    A message that wants an ack gets the reply subject ``<inbox>.<token>``.
    """

    __slots__ = ("_inbox", "_nc", "_unreplied_head", "parts")

    def __init__(self, nc: NatsClient, inbox: str) -> None:
        self._nc = nc
        self._inbox = inbox
        self.parts: list[bytes] = []
        self._unreplied_head = 0  # index in parts of the newest HPUB line without a reply

    def add(
        self, subject: str, token: int, block: bytes, data: bytes, block_size: int, size: int
    ) -> None:
        """Queue one frame: ``token`` is its reply token, or NO_REPLY; ``block_size`` is
        ``len(block)``, ``size`` that plus ``len(data)`` (the caller has both already)."""
        parts = self.parts
        if token == NO_REPLY:
            self._unreplied_head = len(parts)
            head = f"HPUB {subject} {block_size} {size}\r\n"
        else:
            head = f"HPUB {subject} {self._inbox}.{token} {block_size} {size}\r\n"
        parts += (head.encode(), block, data, _CRLF)

    def add_lines(
        self, subject: str, token: int, lines: str, more: str, lines_size: int, data: bytes
    ) -> None:
        """Queue one frame whose header block holds ``lines`` then ``more`` (ASCII):
        ``lines_size`` is the size of both in UTF-8, and they must encode (checked by the
        caller). The HPUB line and the header block are made as one text, encoded once:
        the cheapest frame to build. Such a frame never gets a reply after the fact."""
        block_size = lines_size + _BLOCK_OVERHEAD
        reply = "" if token == NO_REPLY else f"{self._inbox}.{token} "
        self.parts += (
            f"HPUB {subject} {reply}{block_size} {block_size + len(data)}\r\n"
            f"{BLOCK_START}{lines}{more}\r\n".encode(),
            data,
            _CRLF,
        )

    def ask_reply_of_last_unreplied(self, subject: str, token: int) -> None:
        """Give the newest frame queued without a reply subject the reply ``token``
        after all (see AckBook.reply_to_tail)."""
        index = self._unreplied_head
        parts = self.parts
        block_size = len(parts[index + 1])
        size = block_size + len(parts[index + 2])
        parts[index] = f"HPUB {subject} {self._inbox}.{token} {block_size} {size}\r\n".encode()

    async def write(self) -> None:
        """Hand every queued frame to nats-py as one command, and have it flushed."""
        batch = b"".join(self.parts)
        self.parts.clear()
        await self._nc._send_command(batch)
        await self._nc._flush_pending()
