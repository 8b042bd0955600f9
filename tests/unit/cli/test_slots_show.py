"""`slots show` and `slots list`: safe_wal_size as the server means it."""

from __future__ import annotations

import dataclasses

from cdc_bridge.cli.slots import _show_lines, slot_document
from cdc_bridge.source.catalog import SlotInfo

SLOT = SlotInfo("s", "pgoutput", "app", False, None, 0x100, 0x100, "reserved")


def safe_wal_line(**changes: object) -> str:
    slot = dataclasses.replace(SLOT, **changes)  # type: ignore[arg-type]
    document = {**slot_document(slot, 0x200), "walsender": None, "publication": None,
                "standbys": []}  # fmt: skip
    [line] = [line for line in _show_lines(slot, document) if line.startswith("safe_wal_size")]
    return line.removeprefix("safe_wal_size").strip()


def test_a_healthy_slot_without_a_wal_limit_is_unlimited_not_lost() -> None:
    # NULL with max_slot_wal_keep_size = -1: the reserved slot is fine
    assert safe_wal_line(safe_wal_size=None) == "unlimited (max_slot_wal_keep_size = -1)"


def test_with_a_wal_limit_the_bytes_left() -> None:
    assert safe_wal_line(safe_wal_size=3 * 1024 * 1024) == "3.0 MiB (3145728 bytes)"
    assert safe_wal_line(safe_wal_size=-4096, wal_status="unreserved") == (
        "none left (-4096 bytes): lost at the next checkpoint"
    )


def test_lost_only_when_lost() -> None:
    assert safe_wal_line(safe_wal_size=None, wal_status="lost", restart_lsn=None) == (
        "none: the slot is lost"
    )
