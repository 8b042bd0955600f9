"""Scenario 1: the bridge is killed with SIGKILL at random moments under steady load."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from support.bridge import BridgeProcess
from support.chaos import Auditor, BridgeRunner, LoadGenerator, chaos_bridge_config, slot_state

from cdc_bridge.core.lsn import format_lsn

DUPLICATE_WINDOW = 2.0


@pytest.mark.parametrize(
    ("kills", "past_window", "atomic", "fast"),
    [
        pytest.param(4, 2, None, False, id="short"),
        # The other publishing modes, in make test too (CHAOS_PUBLISH_MODE switches all).
        pytest.param(4, 2, False, False, id="short-per-message"),
        pytest.param(4, 2, False, True, id="short-fast"),
        pytest.param(10, 2, None, False, id="long", marks=pytest.mark.slow),
    ],
)
def test_bridge_killed_under_load(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    kills: int,
    past_window: int,
    atomic: bool | None,
    fast: bool,
) -> None:
    rng = random.Random(chaos_seed)
    config = chaos_bridge_config(
        dsn=chaos_dsn, nats_url=nats_url, name=unique_name,
        duplicate_window=f"{DUPLICATE_WINDOW:g}s", atomic=atomic, fast=fast,
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()  # creates the slot: rows committed from now on must all arrive
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    load.start()
    slow_restarts = set(rng.sample(range(kills), past_window))
    try:
        for kill in range(kills):
            load.wait_for_rows(rng.randint(0, 600))
            bridge.kill()
            if kill in slow_restarts:
                # The fault itself: stay dead until the stream forgot the ids of the last acks
                time.sleep(DUPLICATE_WINDOW + 0.5)
            # Half the time the next kill may come before it is even streaming (or at once)
            bridge.start(wait_streaming=rng.random() < 0.5)
        bridge.wait_streaming()  # the last start must get going before the audit
        load.wait_for_rows(300)
    finally:
        report = load.stop()
    result = Auditor(chaos_dsn, nats_url, unique_name.upper()).audit("1 bridge kill -9")
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert result.committed == report.rows_committed


def test_bridge_stopped_cleanly_under_load_confirms_what_it_stored(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
) -> None:
    """SIGTERM: wait for acks, confirm them, exit 0. Then the slot must cover every message
    the stream holds, so nothing is replayed; after a restart the rest follows."""
    stream = unique_name.upper()
    config = chaos_bridge_config(dsn=chaos_dsn, nats_url=nats_url, name=unique_name)
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    load.start()
    auditor = Auditor(chaos_dsn, nats_url, stream)
    unconfirmed: list[str] = []
    try:
        for _ in range(3):
            load.wait_for_rows(300)
            assert bridge.terminate() == 0, bridge.notable_lines()
            state = slot_state(chaos_dsn, unique_name)
            assert state is not None
            # A message's Cdc-Lsn is its commit record's start, before the confirmable end
            unconfirmed += [
                f"seq {m.seq} lsn {format_lsn(m.lsn)} >= confirmed "
                f"{format_lsn(state.confirmed_flush_lsn)}"
                for m in auditor.stored_messages()
                if m.lsn >= state.confirmed_flush_lsn
            ]
            bridge.start()
        load.wait_for_rows(300)
    finally:
        report = load.stop()
    result = auditor.audit("1b bridge SIGTERM x3")
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert not unconfirmed, f"stored but not confirmed after a clean stop: {unconfirmed[:5]}"
