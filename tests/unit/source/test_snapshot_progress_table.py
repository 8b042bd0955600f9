"""sql/role.sql creates the snapshot progress table for a least-privilege role; the
snapshot command creates it itself otherwise (source/snapshot.py, progress_table_ddl).
The two texts must define the same columns and key."""

from __future__ import annotations

import re
from pathlib import Path

from cdc_bridge.source.snapshot import progress_table_ddl

ROLE_SQL = Path(__file__).resolve().parents[3] / "sql" / "role.sql"


def _columns(ddl: str) -> list[str]:
    """The lines inside the CREATE TABLE's parentheses, whitespace normalised."""
    body = re.search(r"CREATE TABLE IF NOT EXISTS \S+ \((.*?PRIMARY KEY \([^)]*\))", ddl, re.S)
    assert body is not None, ddl
    return [" ".join(line.split()).rstrip(",") for line in body[1].strip().splitlines()]


def test_role_sql_and_the_snapshot_command_define_the_same_progress_table() -> None:
    ours = progress_table_ddl("public.cdc_bridge_snapshots").as_string(None)
    theirs = ROLE_SQL.read_text(encoding="utf-8")
    assert _columns(ours) == _columns(theirs)
    assert _columns(ours)[0] == "snapshot_id text NOT NULL"
