"""Scenario 5: the outbox is idle while another table writes megabytes of WAL.

The slot must follow the WAL anyway (through keepalives): a slot that only moves on outbox
commits would pin every byte written since the last event.
"""

from __future__ import annotations

from collections.abc import Callable

from support.bridge import BridgeProcess
from support.chaos import (
    Auditor,
    BridgeRunner,
    LoadGenerator,
    SlotState,
    chaos_bridge_config,
    slot_state,
    write_noise,
)
from support.waiting import wait_until

NOISE_MEGABYTES = 8
STATUS_INTERVAL = 0.5
ALLOWED_LAG = 1024 * 1024


def test_idle_outbox_does_not_pin_wal(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
) -> None:
    config = chaos_bridge_config(
        dsn=chaos_dsn, nats_url=nats_url, name=unique_name,
        status_interval=f"{STATUS_INTERVAL * 1000:g}ms",
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)  # a few events first: the slot has moved
    load.start()
    try:
        load.wait_for_rows(200)
    finally:
        report = load.stop()
    before = _slot(chaos_dsn, unique_name)
    write_noise(chaos_dsn, NOISE_MEGABYTES)
    written = _slot(chaos_dsn, unique_name)
    noise_bytes = _wal_head(written) - _wal_head(before)
    # A couple of status intervals, plus the walsender noticing it is caught up
    def caught_up() -> SlotState | None:
        state = _slot(chaos_dsn, unique_name)
        return state if state.behind_bytes < ALLOWED_LAG else None

    settled = wait_until(
        caught_up,
        timeout=4 * STATUS_INTERVAL + 3,
        message=f"slot still more than {ALLOWED_LAG} bytes behind the WAL head",
    )
    assert settled is not None  # wait_until returns only a truthy value
    result = Auditor(chaos_dsn, nats_url, unique_name.upper()).audit("5 idle outbox")
    print(report.summary())
    print(
        f"noise: {noise_bytes / 2**20:.1f} MiB of WAL; slot {written.behind_bytes / 2**20:.1f} "
        f"MiB behind right after, {settled.behind_bytes} bytes after settling"
    )
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert noise_bytes >= NOISE_MEGABYTES * 2**20 / 2, "the noise wrote less WAL than planned"


def _slot(dsn: str, name: str) -> SlotState:
    state = slot_state(dsn, name)
    assert state is not None, f"slot {name} is gone"
    return state


def _wal_head(state: SlotState) -> int:
    return state.confirmed_flush_lsn + state.behind_bytes
