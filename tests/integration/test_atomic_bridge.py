"""Atomic mode end to end (issue 30): a real bridge, a real PostgreSQL, nats-server 2.15.

Which settings and streams turn atomic batches on (the ``streaming`` line's ``atomic``),
that events arrive exactly once and in order either way, how transactions are grouped
into batches and cut at ``nats.batch_max_messages``, and that a kill -9 between a stored
batch and the slot's confirmation replays nothing twice, also once the stream's
duplicate window has passed (the reconcile at start-up, not Nats-Msg-Id dedup).

The batches are read raw: JetStream keeps ``Nats-Batch-Id`` and ``Nats-Batch-Sequence``
on every message of an atomic batch (support's fetch_stream_messages strips them).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from nats.js.api import StreamConfig
from support.bridge import (
    STARTUP_TIMEOUT,
    BridgeProcess,
    MakeBridge,
    log_event,
    parse_json_line,
    start_bridge,
)
from support.outbox import (
    Event,
    bridge_config,
    insert_events,
    slot_confirmed_flush_lsn,
    wait_for_ids,
)
from support.waiting import wait_until

from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.dev.nats_server import NatsServer


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message with the batch bookkeeping JetStream keeps on it."""

    seq: int
    msg_id: str
    lsn: int  # Cdc-Lsn: the transaction's commit
    index: int  # Cdc-Index: the event's place in its transaction
    batch_id: str | None
    batch_seq: int | None


def read_stored(nats_url: str, stream: str) -> list[Stored]:
    """Every message of ``stream`` in sequence order, batch headers included (read with an
    ordered consumer: thousands of messages in a moment, nothing left on the server)."""

    async def main() -> list[Stored]:
        nc = await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            found: list[Stored] = []
            if not info.state.messages:
                return found
            subjects = info.config.subjects or [">"]
            sub = await js.subscribe(subjects[0], stream=stream, ordered_consumer=True)
            try:
                while len(found) < info.state.messages:
                    msg = await sub.next_msg(timeout=10)
                    headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
                    batch_seq = headers.get("Nats-Batch-Sequence")
                    found.append(
                        Stored(
                            seq=msg.metadata.sequence.stream,
                            msg_id=headers.get("Nats-Msg-Id", ""),
                            lsn=parse_lsn(headers["Cdc-Lsn"]),
                            index=int(headers["Cdc-Index"]),
                            batch_id=headers.get("Nats-Batch-Id"),
                            batch_seq=None if batch_seq is None else int(batch_seq),
                        )
                    )
            finally:
                await sub.unsubscribe()
            return found
        finally:
            await nc.close()

    return asyncio.run(main())


def batches(stored: list[Stored]) -> list[list[Stored]]:
    """The stored messages grouped by Nats-Batch-Id in sequence order; a message without
    one is a batch of one (published plainly: it is whole by itself), and each batch's
    Nats-Batch-Sequence must run 1..n."""
    groups: list[list[Stored]] = []
    for message in stored:
        alone = message.batch_id is None
        if alone or not groups or groups[-1][0].batch_id != message.batch_id:
            groups.append([])
        groups[-1].append(message)
    ids = [group[0].batch_id for group in groups if group[0].batch_id is not None]
    assert len(set(ids)) == len(ids), "a batch id comes back after another batch"
    for group in groups:
        if group[0].batch_id is not None:
            sequences = [m.batch_seq for m in group]
            assert sequences == list(range(1, len(group) + 1)), group[0].batch_id
            assert len(group) > 1, f"{group[0].batch_id}: a batch of one is sent plainly"
    return groups


def slot_active(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    assert row is not None, f"no slot {slot}"
    return bool(row[0])


def stream_count(nats_url: str, stream: str) -> int:
    async def main() -> int:
        nc = await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            return int((await nc.jsm().stream_info(stream)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(main())


def wait_for_count(nats_url: str, stream: str, count: int, timeout: float = 20) -> None:
    """Wait until the stream holds ``count`` messages (cheaper than reading them all)."""
    wait_until(
        lambda: stream_count(nats_url, stream) >= count,
        timeout=timeout,
        interval=0.1,
        message=f"{stream} never held {count} messages",
    )


def add_stream(nats_url: str, name: str, subject: str, **config: Any) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            await nc.jsm().add_stream(StreamConfig(name=name, subjects=[subject], **config))
        finally:
            await nc.close()

    asyncio.run(main())


def streaming_record(bridge: BridgeProcess, since: int = 0) -> dict[str, Any]:
    line = bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT, since=since)
    record = parse_json_line(line)
    assert record is not None
    return record


def small_transactions(dsn: str, sizes: list[int]) -> list[str]:
    """One committed transaction per size; every id in commit order."""
    ids: list[str] = []
    for number, size in enumerate(sizes):
        rows = [Event(aggregate_id=f"A-{number}", payload={"n": i}) for i in range(size)]
        ids.extend(insert_events(dsn, rows, in_one_transaction=True))
    return ids


def one_large_transaction(dsn: str, count: int) -> list[str]:
    """``count`` events in one INSERT ... SELECT (one transaction); their ids in order."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload)"
            " SELECT t.id, 'ticket', 'BIG', 'created', jsonb_build_object('i', t.n - 1)"
            " FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(id, n) ORDER BY t.n",
            (ids,),
        )
    return ids


# --- which settings and streams give atomic batches --------------------------------------


# (nats.atomic_transactions, the existing stream's allow_atomic or None: the bridge
# creates it with nats.stream.allow_atomic as configured, default true) -> atomic
MODES = [
    ("auto", None, True),
    ("auto", True, True),
    ("auto", False, False),
    (True, None, True),
    (True, True, True),
    (False, None, False),
    (False, True, False),
    (False, False, False),
]


@pytest.mark.parametrize(("setting", "existing", "atomic"), MODES)
def test_atomic_mode_follows_the_setting_and_the_stream(
    make_bridge: MakeBridge,
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    setting: str | bool,
    existing: bool | None,
    atomic: bool,
) -> None:
    stream = unique_name.upper()
    if existing is not None:
        add_stream(nats_url, stream, f"{unique_name}.>", allow_atomic=existing)
    config = bridge_config(pg_dsn, nats_url, unique_name, nats={"atomic_transactions": setting})
    bridge = make_bridge(config)
    assert streaming_record(bridge)["atomic"] is atomic
    off = [r for r in bridge.json_records() if r.get("event") == "atomic_transactions_off"]
    assert len(off) == (0 if atomic else 1), off

    ids = small_transactions(pg_dsn, [3, 1, 2])
    ids += insert_events(pg_dsn, [Event(payload={"alone": i}) for i in range(3)],
                         in_one_transaction=False)  # fmt: skip
    wait_for_ids(nats_url, stream, ids)
    stored = read_stored(nats_url, stream)
    assert [m.msg_id for m in stored] == ids  # once each, in commit order
    if atomic:
        for group in batches(stored):  # whole transactions only
            assert {m.lsn for m in group}.isdisjoint(
                {m.lsn for m in stored if m.batch_id != group[0].batch_id}
            )
    else:
        assert all(m.batch_id is None for m in stored)
    assert bridge.terminate() == 0


def test_atomic_true_on_a_stream_without_allow_atomic_stops_the_bridge(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    stream = unique_name.upper()
    add_stream(nats_url, stream, f"{unique_name}.>", allow_atomic=False)
    config = bridge_config(pg_dsn, nats_url, unique_name, nats={"atomic_transactions": True})
    bridge = make_bridge(config)
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    records = [parse_json_line(line) for line in bridge.lines]
    assert None not in records, "\n".join(bridge.lines)  # no traceback, no plain print
    fatal = [r for r in records if r and r["event"] == "fatal"]
    assert len(fatal) == 1, "\n".join(bridge.lines)
    error = str(fatal[0]["error"])
    assert f"stream {stream} has allow_atomic off" in error, error
    assert "nats.atomic_transactions is true" in error, error
    assert not any(r and r["event"] == "streaming" for r in records)


def test_the_bridge_creates_its_stream_without_allow_atomic_when_configured_so(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name, nats={"stream": {"allow_atomic": False}})
    bridge = make_bridge(config)
    assert streaming_record(bridge)["atomic"] is False
    line = bridge.wait_for_log(log_event("atomic_transactions_off"))
    assert "allow_atomic" in line
    ids = small_transactions(pg_dsn, [2, 2])
    wait_for_ids(nats_url, unique_name.upper(), ids)
    stored = read_stored(nats_url, unique_name.upper())
    assert [m.msg_id for m in stored] == ids
    assert all(m.batch_id is None for m in stored)


# --- large transactions cut at the limit -------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "events", "sizes"),
    [(None, 2500, [1000, 1000, 500]), (300, 700, [300, 300, 100])],
)
def test_a_large_transaction_is_cut_into_batches_at_the_limit(
    make_bridge: MakeBridge,
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    limit: int | None,
    events: int,
    sizes: list[int],
) -> None:
    stream = unique_name.upper()
    nats_section: dict[str, Any] = {"ack_timeout": "10s"}
    if limit is not None:
        nats_section["batch_max_messages"] = limit
    bridge = start_bridge(
        make_bridge, bridge_config(pg_dsn, nats_url, unique_name, nats=nats_section)
    )
    assert streaming_record(bridge)["atomic"] is True
    ids = one_large_transaction(pg_dsn, events)
    wait_for_count(nats_url, stream, events, timeout=60)
    stored = read_stored(nats_url, stream)
    assert [m.msg_id for m in stored] == ids  # all, once, in order
    assert [m.index for m in stored] == list(range(events))
    assert len({m.lsn for m in stored}) == 1
    assert [len(group) for group in batches(stored)] == sizes


# --- a backlog drains grouped, whole transactions per batch ------------------------------


def test_a_backlog_drains_in_batches_of_whole_transactions(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    stream = unique_name.upper()
    limit = 10
    config = bridge_config(pg_dsn, nats_url, unique_name, nats={"batch_max_messages": limit})
    bridge = start_bridge(make_bridge, config)
    assert bridge.terminate() == 0  # the slot exists: what follows waits in the WAL
    sizes = [1, 2, 3, 4, 5, 1, 1, 6, 2, 3, 23, 4, 1, 2, 7, 1, 1, 1, 3, 2, 9, 1]
    ids = small_transactions(pg_dsn, sizes)
    bridge = start_bridge(make_bridge, config)
    wait_for_count(nats_url, stream, len(ids))
    stored = read_stored(nats_url, stream)
    assert [m.msg_id for m in stored] == ids
    groups = batches(stored)
    assert all(len(group) <= limit for group in groups), [len(g) for g in groups]
    assert len(groups) < len(sizes), [len(g) for g in groups]
    size_of = {lsn: size for lsn, size in zip(sorted({m.lsn for m in stored}), sizes, strict=True)}
    batches_of: dict[int, set[str | None]] = {}
    for message in stored:
        batches_of.setdefault(message.lsn, set()).add(message.batch_id)
    split = {lsn: len(b) for lsn, b in batches_of.items() if len(b) > 1 and size_of[lsn] <= limit}
    assert not split, f"transactions split across batches: {split}; {[len(g) for g in groups]}"
    # The one larger than the limit: cut into 10, 10, 3 at most three batches.
    [big] = [lsn for lsn, size in size_of.items() if size > limit]
    assert len(batches_of[big]) == 3
    bridge.terminate()


# --- kill -9 between a stored batch and the slot's confirmation --------------------------


def kill_once_stored(bridge: BridgeProcess, nats_url: str, stream: str, count: int) -> None:
    """Kill -9 the bridge the moment the stream holds ``count`` messages."""
    deadline = time.monotonic() + 30
    while stream_count(nats_url, stream) < count:
        assert time.monotonic() < deadline, f"{stream} never held {count} messages"
        assert bridge.running, "\n".join(bridge.lines[-30:])
    bridge.kill()


@pytest.mark.parametrize("duplicate_window", [None, 1.0], ids=["default_window", "window_1s"])
def test_a_kill_after_a_stored_batch_before_the_confirm_stores_nothing_twice(
    make_bridge: MakeBridge,
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    duplicate_window: float | None,
) -> None:
    stream = unique_name.upper()
    if duplicate_window is not None:
        add_stream(
            nats_url, stream, f"{unique_name}.>", allow_atomic=True,
            duplicate_window=duplicate_window,
        )  # fmt: skip
    # The catalog watch vouches for what may be confirmed once per status interval: with a
    # long one, nothing streamed after the start is confirmed before the kill.
    held = bridge_config(pg_dsn, nats_url, unique_name, postgres={"status_interval": "60s"})
    bridge = start_bridge(make_bridge, held)
    assert streaming_record(bridge)["atomic"] is True
    ids = small_transactions(pg_dsn, [3, 2, 4])
    kill_once_stored(bridge, nats_url, stream, len(ids))
    stored = read_stored(nats_url, stream)
    assert [m.msg_id for m in stored] == ids
    assert len(batches(stored)) >= 1
    restart_after_the_kill(
        make_bridge,
        bridge_config(pg_dsn, nats_url, unique_name),
        "atomic",
        pg_dsn,
        nats_url,
        stored,
        ids,
        duplicate_window,
    )


def restart_after_the_kill(
    make_bridge: MakeBridge,
    config: dict[str, Any],
    mode: str,
    pg_dsn: str,
    nats_url: str,
    stored: list[Stored],
    ids: list[str],
    duplicate_window: float | None,
) -> None:
    """After a kill -9 with ``ids`` stored and not confirmed: a new bridge (its ``mode``
    on) replays them, and the stream ends up with each once, then what came after."""
    stream, slot = config["nats"]["stream"]["name"], config["postgres"]["slot"]
    # The walsender may still read a status update sent just before the kill: the slot's
    # position is final once the slot is no longer active.
    wait_until(lambda: not slot_active(pg_dsn, slot), timeout=10, message="slot still active")
    confirmed = slot_confirmed_flush_lsn(pg_dsn, slot)
    assert confirmed is not None and confirmed <= stored[0].lsn, "confirmed before the kill"
    if duplicate_window is not None:
        time.sleep(duplicate_window + 0.5)  # Nats-Msg-Id dedup has forgotten them

    bridge = start_bridge(make_bridge, config)
    assert streaming_record(bridge)[mode] is True
    more = small_transactions(pg_dsn, [2, 1])
    wait_for_ids(nats_url, stream, more)
    # The replayed transactions come first: once these are in, all of them were.
    stored = read_stored(nats_url, stream)
    assert [m.msg_id for m in stored] == ids + more, "a duplicate or a gap"
    wait_until(
        lambda: (slot_confirmed_flush_lsn(pg_dsn, slot) or 0) > stored[-1].lsn,
        timeout=10,
        message=f"the slot never confirmed {stored[-1].lsn:X} after the restart",
    )
    assert bridge.terminate() == 0
    assert [m.msg_id for m in read_stored(nats_url, stream)] == ids + more


# --- a server that allows fewer messages per batch than the bridge sends -----------------


def test_a_server_batch_limit_below_batch_max_messages_is_one_fatal_line(
    make_bridge: MakeBridge, pg_dsn: str, devstack_tmp: Path, unique_name: str
) -> None:
    config_file = devstack_tmp / "nats.conf"
    config_file.write_text("jetstream { limits { batch { max_msgs: 10 } } }\n")
    server = NatsServer(devstack_tmp / "nats", extra_args=["-c", str(config_file)])
    server.start()
    try:
        config = bridge_config(pg_dsn, server.url, unique_name)
        bridge = start_bridge(make_bridge, config)
        one_large_transaction(pg_dsn, 20)
        assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
        records = [parse_json_line(line) for line in bridge.lines]
        assert None not in records, "\n".join(bridge.lines)  # no traceback
        fatal = [r for r in records if r and r["event"] == "fatal"]
        assert len(fatal) == 1, "\n".join(bridge.lines)
        error = str(fatal[0]["error"])
        assert "atomic publish batch is too large: 10" in error, error
        assert "nats.batch_max_messages (1000)" in error and "max_msgs" in error, error
        # The fix it names: the bridge's limit at the server's. Everything arrives.
        config["nats"]["batch_max_messages"] = 10
        start_bridge(make_bridge, config)
        wait_for_count(server.url, unique_name.upper(), 20)
        stored = read_stored(server.url, unique_name.upper())
        assert [len(group) for group in batches(stored)] == [10, 10]
    finally:
        server.close()
