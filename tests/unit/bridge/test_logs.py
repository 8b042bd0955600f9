"""Log lines: what the progress line holds, and how every logger is rendered."""

from __future__ import annotations

import json
import logging
import re

import pytest
import structlog

from cdc_bridge.bridge.logs import configure_logging
from cdc_bridge.bridge.pipeline import SessionStats
from cdc_bridge.bridge.status import BridgeStatus, progress_fields

pytestmark = pytest.mark.usefixtures("restore_logging")


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
    structlog.get_logger("cdc_bridge.bridge.supervisor").info("progress", **fields)
    line = capsys.readouterr().err
    assert "progress" in line and "None" not in line


class FixedProgress:
    """A session's progress that stands still (status.LiveProgress)."""

    def __init__(self, confirmed_lsn: int) -> None:
        self._confirmed = confirmed_lsn

    def confirmed(self) -> int:
        return self._confirmed

    def in_flight(self) -> int:
        return 0

    def last_ack_at(self) -> float:
        return 0.0


def test_the_progress_line_has_lsn_and_lag_once_known() -> None:
    status = BridgeStatus(slot="s", stream="S", role="streaming", lag_bytes=0)
    status.progress = FixedProgress(confirmed_lsn=0x16B3748)
    fields = progress_fields(status, SessionStats(), rate=12.34)
    assert (fields["lsn"], fields["lag_bytes"], fields["events_per_second"]) == (
        "0/16B3748", 0, 12.3,
    )  # fmt: skip


def test_library_lines_are_rendered_like_ours_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug", redactor=lambda text: text.replace("s3cr3t", "***"))
    structlog.get_logger("cdc_bridge.test").debug("ours", n=1)
    logging.getLogger("nats.aio.client").debug("theirs %s with s3cr3t", "x")
    ours, theirs = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (ours["event"], ours["level"]) == ("ours", "debug")
    assert theirs == {
        "event": "theirs x with ***",
        "level": "debug",
        "logger": "nats.aio.client",
        "timestamp": theirs["timestamp"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", theirs["timestamp"])


def test_library_lines_are_rendered_like_ours_on_the_console(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("console", "debug")
    structlog.get_logger("cdc_bridge.test").debug("ours", n=1)
    logging.getLogger("asyncio").debug("Using selector: %s", "EpollSelector")
    ours, theirs = capsys.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[debug\s*\] "
    assert re.match(stamp + r"ours\s+n=1$", ours), ours
    assert re.match(stamp + r"Using selector: EpollSelector\s+\[asyncio\]$", theirs), theirs


def test_below_debug_library_lines_and_debug_lines_stay_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    structlog.get_logger("cdc_bridge.test").debug("ours")
    logging.getLogger("nats.aio.client").error("theirs")
    assert capsys.readouterr().err == ""
    assert not structlog.get_logger("cdc_bridge.test").is_enabled_for(logging.DEBUG)
