"""JetStream helpers: create a stream, read its state with timestamps, wait for a count.

The stream's own first/last message timestamps time every relay the same way: the
moment JetStream stored the first and the last event, whoever published them.
nats-py's StreamState drops those fields, so the info request is made raw.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig

# Like the bridge's default stream (config/example.yaml): file storage, 2 min dedupe window.
DUPLICATE_WINDOW = 120.0
_POLL_INTERVAL = 0.05
_STREAM_NOT_FOUND = 10059  # JetStream API err_code
_UNSET_TIME = datetime.fromisoformat("0001-01-01T00:00:00Z")  # an empty stream's timestamps


@dataclass(frozen=True, slots=True)
class StreamState:
    messages: int
    first_ts: float | None  # Unix time JetStream stored the first message; None if empty
    last_ts: float | None


async def create_stream(
    nc: NatsClient,
    name: str,
    subjects: list[str],
    *,
    allow_atomic: bool | None = None,
    allow_batched: bool | None = None,
) -> None:
    await nc.jetstream().add_stream(
        StreamConfig(
            name=name,
            subjects=subjects,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            allow_atomic=allow_atomic,
            allow_batched=allow_batched,
        )
    )


async def delete_stream(nc: NatsClient, name: str) -> None:
    await nc.jetstream().delete_stream(name)


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)  # RFC 3339; 3.11 truncates nanoseconds
    return None if moment == _UNSET_TIME else moment.timestamp()


async def stream_state(nc: NatsClient, name: str) -> StreamState:
    """The stream's message count and timestamps; empty while it does not exist yet."""
    reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
    info = json.loads(reply.data)
    if info.get("error", {}).get("err_code") == _STREAM_NOT_FOUND:
        return StreamState(messages=0, first_ts=None, last_ts=None)  # not created yet
    if "error" in info:
        raise RuntimeError(f"stream info {name}: {info['error'].get('description')}")
    state = info["state"]
    return StreamState(
        messages=int(state["messages"]),
        first_ts=_timestamp(state.get("first_ts")),
        last_ts=_timestamp(state.get("last_ts")),
    )


async def wait_for_messages(
    nc: NatsClient,
    name: str,
    count: int,
    timeout: float,
    check_alive: Callable[[], None] = lambda: None,
) -> StreamState:
    """Poll until the stream holds ``count`` messages; TimeoutError at the deadline.

    ``check_alive`` runs on every poll and should raise when the producer has died, so a
    crash fails at once instead of at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        state = await stream_state(nc, name)
        if state.messages >= count:
            return state
        check_alive()
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"stream {name} holds {state.messages} of {count} messages after {timeout:g}s"
            )
        await asyncio.sleep(_POLL_INTERVAL)


async def _api(nc: NatsClient, subject: str, request: dict[str, object]) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(request).encode(), timeout=5)
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        raise RuntimeError(f"{subject}: {answer['error'].get('description')}")
    return answer


async def subject_state(nc: NatsClient, name: str, subjects: str) -> StreamState:
    """Like ``stream_state``, for the messages on ``subjects`` only (a filter such as
    ``bench.>``): what one writer stored in a stream that others write too."""
    info = await _api(nc, f"$JS.API.STREAM.INFO.{name}", {"subjects_filter": subjects})
    count = sum(int(n) for n in (info["state"].get("subjects") or {}).values())
    if count == 0:
        return StreamState(messages=0, first_ts=None, last_ts=None)
    get = f"$JS.API.STREAM.MSG.GET.{name}"
    first = await _api(nc, get, {"seq": 1, "next_by_subj": subjects})
    last = await _api(nc, get, {"last_by_subj": subjects})
    return StreamState(
        messages=count,
        first_ts=_timestamp(first["message"].get("time")),
        last_ts=_timestamp(last["message"].get("time")),
    )


async def wait_for_subject_messages(
    nc: NatsClient,
    name: str,
    subjects: str,
    count: int,
    timeout: float,
    check_alive: Callable[[], None] = lambda: None,
) -> StreamState:
    """``wait_for_messages`` counting only the messages on ``subjects``."""
    deadline = time.monotonic() + timeout
    while True:
        info = await _api(nc, f"$JS.API.STREAM.INFO.{name}", {"subjects_filter": subjects})
        stored = sum(int(n) for n in (info["state"].get("subjects") or {}).values())
        if stored >= count:
            return await subject_state(nc, name, subjects)
        check_alive()
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"stream {name} holds {stored} of {count} messages on {subjects} after {timeout:g}s"
            )
        await asyncio.sleep(_POLL_INTERVAL)
