"""`cdc-bridge audit`'s pieces that need no server: the sorted spill, the merge walk,
the order check, the command line."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cdc_bridge.bridge.audit import AuditResult, _merge, _OrderCheck, _SortedSpill
from cdc_bridge.cli.main import build_parser
from cdc_bridge.source.outbox_rows import Window


def test_the_spill_sorts_across_chunk_files_and_groups_every_copy(tmp_path: Path) -> None:
    entries = [(f"id{n % 50:03d}", "public.outbox", n) for n in range(120)]
    random.Random(7).shuffle(entries)
    spill = _SortedSpill(str(tmp_path), chunk=16)
    for entry in entries:
        spill.add(*entry)
    assert len(list(tmp_path.iterdir())) == 7  # 120 // 16 files, the rest in memory
    groups = list(spill.groups())
    assert [key for key, _ in groups] == sorted({(e[0], e[1]) for e in entries})
    assert dict(groups)[("id000", "public.outbox")] == [0, 50, 100]


class _NoLookups:
    def __init__(self, result: AuditResult, existing: set[str]) -> None:
        self._result, self._existing = result, existing

    async def add(self, key: tuple[str, str]) -> None:
        if key[0] in self._existing:
            self._result.outside_window += 1
        else:
            self._result.unretained += 1

    async def flush(self) -> None:
        return None


async def _rows(keys: list[tuple[str, str, bool]]) -> AsyncIterator[list[tuple[str, str, bool]]]:
    for start in range(0, len(keys), 2):
        yield keys[start : start + 2]


def _walk(
    stored: dict[tuple[str, str], list[int]],
    rows: list[str],
    order: _OrderCheck,
    existing: set[str],
    early: frozenset[str] = frozenset(),
) -> AuditResult:
    result = AuditResult("S", "1/slot", Window())
    lookups: Any = _NoLookups(result, existing)
    groups = iter(sorted(stored.items()))
    keys = [(row, "t", row in early) for row in sorted(rows)]
    asyncio.run(_merge(groups, _rows(keys), order, lookups, result, None))
    return result


def test_the_merge_walk_counts_each_disagreement_once() -> None:
    stored = {("a", "t"): [1], ("b", "t"): [2, 9], ("d", "t"): [4], ("e", "t"): [5]}
    result = _walk(stored, ["a", "b", "c", "d", "d"], _OrderCheck(), existing={"e"})
    assert (result.rows, result.missing, result.missing_ids) == (4, 1, ["c"])
    assert (result.duplicated, result.extra_copies, result.duplicated_ids) == (1, 1, ["b"])
    assert (result.unretained, result.outside_window) == (0, 1)
    assert result.clean is False


def test_rows_before_the_streams_retention_are_expected_missing_the_rest_checked() -> None:
    # a and b were created before the row of the stream's first held message (c): a's
    # message was removed by the stream's limits, b's is still held; e's was deleted.
    stored = {("b", "t"): [7], ("c", "t"): [8], ("d", "t"): [9, 11]}
    result = _walk(
        stored, ["a", "b", "c", "d", "e"], _OrderCheck(), set(), early=frozenset({"a", "b"})
    )
    assert (result.outside_retention, result.rows) == (1, 4)
    assert (result.missing, result.missing_ids, result.duplicated) == (1, ["e"], 1)


def test_a_later_copy_is_a_duplicate_not_a_reordering() -> None:
    order = _OrderCheck()
    for seq, (key, lsn) in enumerate([("a", "0/10"), ("b", "0/20"), ("c", "0/30")], 1):
        order.see((key, "t"), seq, {"Cdc-Lsn": lsn, "Cdc-Index": "0"})
    order.see(("b", "t"), 4, {"Cdc-Lsn": "0/20", "Cdc-Index": "0"})  # a copy of b
    order.see(("d", "t"), 5, {"Cdc-Lsn": "0/5", "Cdc-Index": "0"})  # stored late
    order.see(("e", "t"), 6, {"Cdc-Lsn": "0/1", "Cdc-Replay": "true"})  # replays: not checked
    stored = {("a", "t"): [1], ("b", "t"): [2, 4], ("c", "t"): [3], ("d", "t"): [5]}
    result = _walk(stored, ["a", "b", "c", "d"], order, existing=set())
    assert (result.out_of_order, result.out_of_order_ids, result.order_checked) == (1, ["d"], 5)
    assert result.duplicated == 1


def test_the_command_line_takes_a_window() -> None:
    args = build_parser(["audit"]).parse_args(
        ["audit", "--config", "c.yaml", "--since", "25h", "--until", "5m", "--json"]
    )
    assert (args.since, args.start, args.until, args.json) == (90_000.0, None, 300.0, True)
    args = build_parser(["audit"]).parse_args(
        ["audit", "--config", "c.yaml", "--from", "2026-12-01T08:00:00", "--until", "2026-12-02"]
    )
    assert args.start.isoformat() == "2026-12-01T08:00:00+00:00"
    assert args.until.isoformat() == "2026-12-02T00:00:00+00:00"


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "--config", "c.yaml", "--since", "1d", "--from", "2026-12-01"],
        ["audit", "--config", "c.yaml", "--since", "7"],
        ["audit", "--config", "c.yaml", "--from", "yesterday"],
        ["audit"],
    ],
)
def test_unusable_windows_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser(argv).parse_args(argv)
    assert exited.value.code == 2
