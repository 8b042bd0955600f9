"""Log lines: what the progress line holds, and how every logger is rendered."""

from __future__ import annotations

import pytest
import structlog

from cdc_bridge.logs import configure_logging
from cdc_bridge.pipeline import SessionStats
from cdc_bridge.status import BridgeStatus, progress_fields


def test_the_progress_line_leaves_out_what_is_not_known_yet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = BridgeStatus(slot="s", stream="S", role="connecting")
    fields = progress_fields(status, SessionStats(rows=3), rate=0.0)
    assert fields == {
        "role": "connecting", "events_per_second": 0.0, "events": 3, "dead_lettered": 0,
        "in_flight": 0,
    }  # fmt: skip
    configure_logging("console", "info")
    structlog.get_logger("cdc_bridge.daemon").info("progress", **fields)
    line = capsys.readouterr().err
    assert "progress" in line and "None" not in line


def test_the_progress_line_has_lsn_and_lag_once_known() -> None:
    status = BridgeStatus(slot="s", stream="S", role="streaming", lag_bytes=0)
    status.confirmed = lambda: 0x16B3748
    fields = progress_fields(status, SessionStats(), rate=12.34)
    assert (fields["lsn"], fields["lag_bytes"], fields["events_per_second"]) == (
        "0/16B3748", 0, 12.3,
    )  # fmt: skip
