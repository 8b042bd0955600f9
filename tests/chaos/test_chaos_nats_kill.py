"""Scenario 2: nats-server is killed (SIGKILL) under load, stays down, comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from support.bridge import BridgeProcess
from support.chaos import (
    Auditor,
    BridgeRunner,
    LoadGenerator,
    SlotState,
    chaos_bridge_config,
    read_stream,
    slot_state,
)
from support.tcp_proxy import TcpProxy
from support.waiting import wait_until

from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.dev.nats_server import NatsServer

OUTAGE = 4.0


def test_nats_killed_under_load(
    chaos_dsn: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    tcp_proxy: Callable[[int], TcpProxy],
    chaos_seed: int,
) -> None:
    nats_server = isolated_nats_server
    stream = unique_name.upper()
    # The bridge reaches NATS through a proxy so that, once the server is back, the test can
    # read what survived the kill before the bridge gets to publish anything new.
    proxy = tcp_proxy(nats_server.port)
    config = chaos_bridge_config(
        dsn=chaos_dsn, nats_url=f"nats://127.0.0.1:{proxy.port}", name=unique_name
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    load.start()
    try:
        load.wait_for_rows(500)
        mark = bridge.current.mark()
        nats_server.kill()
        # The failed session's last status update is its last word: wait for its walsender
        # to go, then the slot must not move until NATS is back
        wait_until(lambda: not _slot(chaos_dsn, unique_name).active, message="slot still active")
        confirmed_at_kill = _slot(chaos_dsn, unique_name).confirmed_flush_lsn
        samples = _sample_confirmed(chaos_dsn, unique_name, OUTAGE)
        proxy.block()
        nats_server.start()  # same port, same store
        survivors = asyncio.run(read_stream(nats_server.url, stream))
        proxy.unblock()
        bridge.wait_streaming(since=mark, timeout=60)
        load.wait_for_rows(500)
    finally:
        report = load.stop()
    result = Auditor(chaos_dsn, nats_server.url, stream).audit("2 nats-server kill -9")
    print(report.summary())
    print(result.summary())
    print(
        f"confirmed_flush_lsn during the {OUTAGE:g}s outage: {format_lsn(confirmed_at_kill)}, "
        f"{len(samples)} samples, {len(survivors)} messages survived the kill"
    )
    Auditor.assert_clean(result, bridge.notable_lines())
    assert set(samples) == {confirmed_at_kill}, "the slot moved while NATS was down"
    # Everything the slot had confirmed must have been stored before the kill: a confirmed
    # transaction is never sent again, so a missing one would be lost for good.
    survived = {message.msg_id for message in survivors}
    confirmed_but_missing = [
        message
        for message in Auditor(chaos_dsn, nats_server.url, stream).stored_messages()
        if message.lsn < confirmed_at_kill and message.msg_id not in survived
    ]
    assert not confirmed_but_missing, (
        f"{len(confirmed_but_missing)} messages of transactions confirmed before the kill "
        f"were not stored, e.g. {confirmed_but_missing[:3]}"
    )


def _slot(dsn: str, name: str) -> SlotState:
    state = slot_state(dsn, name)
    assert state is not None, f"slot {name} is gone"
    return state


def _sample_confirmed(dsn: str, slot: str, seconds: float) -> list[int]:
    """The slot's confirmed position, read every 100 ms for ``seconds`` (the outage)."""
    samples: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(_slot(dsn, slot).confirmed_flush_lsn)
        time.sleep(0.1)
    return samples
