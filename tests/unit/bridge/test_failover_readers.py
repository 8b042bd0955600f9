"""Every reader of a standby's copy of the failover slot (issue 29 item 3): /status, the
metric, the bridge's warning and `slots show` call a temporary copy not ready yet, with
the reason (the rule itself: tests/unit/source/test_standbys.py; `check`: the
integration test of a temporary copy in tests/integration/test_failover.py)."""

from __future__ import annotations

import dataclasses

from structlog.testing import capture_logs

from cdc_bridge.bridge.failover import record_standbys
from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.cli.slots import _show_lines, slot_document
from cdc_bridge.source.catalog import SlotInfo
from cdc_bridge.source.standbys import StandbySlot, standby_document

TEMPORARY = StandbySlot("db2:5432", synced=True, temporary=True, confirmed_flush_lsn=0x100)
PERSISTED = dataclasses.replace(TEMPORARY, temporary=False)
METRIC = 'cdc_bridge_failover_slot_synchronized{standby="db2:5432"}'


def look(copy: StandbySlot, status: BridgeStatus, metrics: Metrics, warned: set[str]) -> None:
    record_standbys([copy], 0x180, "cdc_bridge", status, metrics, warned)


def test_status_metric_and_warning_of_a_temporary_copy() -> None:
    status, metrics = BridgeStatus(slot="cdc_bridge", stream="OUTBOX"), Metrics()
    warned: set[str] = set()
    with capture_logs() as logs:
        look(TEMPORARY, status, metrics, warned)
    [standby] = status.standbys
    assert (standby["synchronized"], standby["temporary"]) == (False, True)
    assert standby["behind_bytes"] == 0x80
    assert str(standby["not_ready"]).startswith("its copy is still temporary")
    assert f"{METRIC} 0.0" in metrics.render().decode()
    [warning] = [r for r in logs if r["event"] == "failover_slot_not_synchronized"]
    assert warning["log_level"] == "warning"
    assert "(its copy is still temporary (not ready yet)" in warning["error"]
    assert "dropped at promotion" in warning["error"]

    with capture_logs() as logs:  # persisted: ready everywhere, and no new warning
        look(PERSISTED, status, metrics, warned)
    assert status.standbys[0]["synchronized"] is True
    assert status.standbys[0]["not_ready"] is None
    assert f"{METRIC} 1.0" in metrics.render().decode()
    assert logs == [] and warned == set()


def show_line(copy: StandbySlot) -> str:
    slot = SlotInfo("cdc_bridge", "pgoutput", "app", False, None, 0x100, 0x180, "reserved")
    document = {**slot_document(slot, 0x200), "walsender": None, "publication": None,
                "standbys": [standby_document(copy, 0x80, str)]}  # fmt: skip
    [line] = [line for line in _show_lines(slot, document) if "standby db2:5432" in line]
    return line.split("standby db2:5432", 1)[1].strip()


def test_slots_show_of_a_temporary_copy() -> None:
    assert show_line(TEMPORARY).startswith(
        "NOT synchronized: its copy is still temporary (not ready yet)"
    )
    assert "a failover to it stops the bridge" in show_line(TEMPORARY)
    assert show_line(PERSISTED) == "synchronized, 128 B (128 bytes) behind"
    invalidated = dataclasses.replace(PERSISTED, invalidated="wal_removed")
    assert show_line(invalidated).startswith(
        "NOT synchronized: its copy is invalidated (wal_removed)"
    )
