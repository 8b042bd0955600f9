"""HPUB frames (sink/wire.py): with and without a reply subject, and one write."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from nats.aio.client import Client as NatsClient

from cdc_bridge.sink.ack_book import NO_REPLY
from cdc_bridge.sink.wire import Frames, header_block


class RecordingClient:
    """Stands in for nats-py's pending buffer (what ``Frames.write`` hands it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def _send_command(self, cmd: bytes, priority: bool = False) -> None:
        self.calls.append(("send", cmd))

    async def _flush_pending(self, force_flush: bool = False) -> None:
        self.calls.append(("flush", None))


def test_header_block_ends_with_the_order_guards_line() -> None:
    block = header_block("Nats-Msg-Id: a\r\n", "Nats-Expected-Last-Msg-Id: z\r\n")
    assert block == b"NATS/1.0\r\nNats-Msg-Id: a\r\nNats-Expected-Last-Msg-Id: z\r\n\r\n"
    assert header_block("", "") == b"NATS/1.0\r\n\r\n"


def test_frames_with_and_without_reply_then_the_last_unreplied_gets_one() -> None:
    client = RecordingClient()
    frames = Frames(cast(NatsClient, client), "_INBOX.x")
    block = header_block("Nats-Msg-Id: a\r\n", "")
    size = len(block)
    frames.add("events.a", 7, block, b"{}", size, size + 2)
    frames.add("events.b", NO_REPLY, block, b"[1]", size, size + 3)
    frames.add("other.c", 8, block, b"", size, size)  # outside the chain: the unreplied one stays
    assert frames.parts == [
        f"HPUB events.a _INBOX.x.7 {size} {size + 2}\r\n".encode(), block, b"{}", b"\r\n",
        f"HPUB events.b {size} {size + 3}\r\n".encode(), block, b"[1]", b"\r\n",
        f"HPUB other.c _INBOX.x.8 {size} {size}\r\n".encode(), block, b"", b"\r\n",
    ]
    frames.ask_reply_of_last_unreplied("events.b", 9)
    assert frames.parts[4] == f"HPUB events.b _INBOX.x.9 {size} {size + 3}\r\n".encode()

    asyncio.run(frames.write())
    expected = b"".join(
        [
            f"HPUB events.a _INBOX.x.7 {size} {size + 2}\r\n".encode(), block, b"{}\r\n",
            f"HPUB events.b _INBOX.x.9 {size} {size + 3}\r\n".encode(), block, b"[1]\r\n",
            f"HPUB other.c _INBOX.x.8 {size} {size}\r\n".encode(), block, b"\r\n",
        ]
    )
    assert client.calls == [("send", expected), ("flush", None)]
    assert frames.parts == []


def test_a_frame_made_from_header_lines_is_the_frame_add_makes() -> None:
    client = RecordingClient()
    frames = Frames(cast(NatsClient, client), "_INBOX.x")
    lines, more = "Nats-Msg-Id: ä\r\n", "Nats-Batch-Sequence: 1\r\n"
    size = len(lines.encode()) + len(more)
    frames.add_lines("events.a", NO_REPLY, lines, more, size, b"{}")
    frames.add_lines("events.b", 7, lines, more, size, b"")
    block = header_block(lines, more)
    reference = Frames(cast(NatsClient, client), "_INBOX.x")
    reference.add("events.a", NO_REPLY, block, b"{}", len(block), len(block) + 2)
    reference.add("events.b", 7, block, b"", len(block), len(block))
    assert b"".join(frames.parts) == b"".join(reference.parts)
