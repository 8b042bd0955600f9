"""Ranking py-spy's collapsed stacks (bench/profiling.py)."""

from __future__ import annotations

from pathlib import Path

from bench.profiling import top_functions


def test_a_native_sample_in_an_inlined_refcount_helper_counts_for_its_caller(
    tmp_path: Path,
) -> None:
    collapsed = tmp_path / "bridge.collapsed.txt"
    collapsed.write_text(
        "run (asyncio/events.py:80);CPyDef_decode (build/__native.c:10);"
        "Py_DECREF (Include/object.h:537) 3\n"
        "run (asyncio/events.py:80);CPyDef_decode (build/__native.c:12) 1\n"
    )
    [top, *rest] = top_functions(collapsed)
    assert top.function == "CPyDef_decode (build/__native.c)"
    assert (top.self_pct, top.total_pct) == (100.0, 100.0)
    assert [cost.function for cost in rest] == []
