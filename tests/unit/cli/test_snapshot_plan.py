"""`cdc-bridge snapshot`'s pure parts: which snapshot a run writes under, the SQL it
composes, and the words it prints (no server)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from psycopg import sql

from cdc_bridge.cli.errors import OpsError
from cdc_bridge.cli.snapshot import (
    Plan,
    Request,
    choose_snapshot,
    new_snapshot_id,
    plan_lines,
    progress_text,
    qualified,
)
from cdc_bridge.core.snapshots import SNAPSHOT_PREFIX, valid_snapshot_id
from cdc_bridge.source.snapshot import (
    Column,
    Progress,
    TableShape,
    bound_statement,
    chunk_statement,
    count_statement,
    lock_key,
    message_expression,
    progress_table_ddl,
)

NOW = datetime(2026, 12, 8, 2, 15, 0, tzinfo=UTC)
SHAPE = TableShape(
    table="public.lines",
    columns=(
        Column("order_id", "integer", 23),
        Column("line", "smallint", 21),
        Column("note", "character varying(20)", 1043),
    ),
    key=(Column("order_id", "integer", 23), Column("line", "smallint", 21)),
)


def progress(snapshot_id: str, *, finished: bool = False, rows: int = 10, **kw: object) -> Progress:
    values: dict[str, object] = {
        "snapshot_id": snapshot_id,
        "table": "public.lines",
        "where_clause": None,
        "chunk_size": 1000,
        "last_key": ("7", "2"),
        "rows": rows,
        "chunks": 1,
        "started_at": NOW,
        "updated_at": NOW,
        "finished_at": NOW if finished else None,
    }
    values.update(kw)
    return Progress(**values)  # type: ignore[arg-type]


def request(**kw: object) -> Request:
    values: dict[str, object] = {"table": "public.lines", "where": None, "chunk": None,
                                 "snapshot_id": None}  # fmt: skip
    values.update(kw)
    return Request(**values)  # type: ignore[arg-type]


def rendered(statement: sql.Composable) -> str:
    # as_string needs a connection only for literals' encoding: none of ours need one
    return statement.as_string(None)


# --- which snapshot --------------------------------------------------------------------


def test_a_new_snapshot_is_named_after_the_table_and_the_utc_time() -> None:
    snapshot_id, resumed = choose_snapshot(request(), [progress("old", finished=True)], NOW)
    assert (snapshot_id, resumed) == ("lines-20261208T021500Z", None)
    assert valid_snapshot_id(new_snapshot_id("public.we$ird", NOW))
    assert valid_snapshot_id(new_snapshot_id("public." + "x" * 63, NOW))


def test_two_snapshots_in_one_second_get_different_ids() -> None:
    taken = progress("lines-20261208T021500Z", finished=True)
    assert choose_snapshot(request(), [taken], NOW)[0] == "lines-20261208T021500Z-2"


def test_the_one_unfinished_snapshot_is_resumed() -> None:
    unfinished = progress("s2")
    assert choose_snapshot(request(), [progress("s1", finished=True), unfinished], NOW) == (
        "s2",
        unfinished,
    )
    assert choose_snapshot(request(snapshot_id="s2"), [unfinished], NOW) == ("s2", unfinished)


def test_two_unfinished_snapshots_need_an_id() -> None:
    with pytest.raises(OpsError, match="2 unfinished snapshots \\(s1, s2\\): give --id"):
        choose_snapshot(request(), [progress("s1"), progress("s2")], NOW)
    assert (
        choose_snapshot(request(snapshot_id="s1"), [progress("s1"), progress("s2")], NOW)[0] == "s1"
    )


def test_a_finished_snapshot_is_not_run_again() -> None:
    with pytest.raises(OpsError, match="finished at 2026-12-08T02:15:00Z \\(10 rows\\)"):
        choose_snapshot(request(snapshot_id="s1"), [progress("s1", finished=True)], NOW)


def test_resuming_with_another_selection_names_both_and_the_way_out() -> None:
    started = progress("s1", where_clause="status = 'open'")
    with pytest.raises(OpsError) as where:
        choose_snapshot(request(where="true"), [started], NOW)
    assert "started with --where \"status = 'open'\", not --where 'true'" in str(where.value)
    assert "--id NEW" in str(where.value)
    with pytest.raises(OpsError, match="--chunk 1000, not 50: leave out --chunk"):
        choose_snapshot(request(where="status = 'open'", chunk=50), [started], NOW)


def test_table_names_default_to_public() -> None:
    assert qualified("orders") == "public.orders"
    assert qualified("sales.orders") == "sales.orders"


# --- SQL -------------------------------------------------------------------------------


def test_the_chunk_locks_its_key_range_in_key_order_and_emits_one_message_per_row() -> None:
    first = rendered(chunk_statement(SHAPE, "s1", None, after=False, bounded=False))
    assert 'ORDER BY "order_id", "line" FOR SHARE' in first and "LIMIT" not in first
    assert "AS MATERIALIZED" in first
    assert f"pg_logical_emit_message(true, '{SNAPSHOT_PREFIX}', cdc_message)" in first
    assert "WHERE true AND true AND true" in first
    later = rendered(chunk_statement(SHAPE, "s1", None, after=True, bounded=True))
    assert (
        '("order_id", "line") > (CAST(%s AS integer), CAST(%s AS smallint)) AND '
        '("order_id", "line") <= (CAST(%s AS integer), CAST(%s AS smallint))' in later
    )


def test_the_chunks_upper_key_is_read_first_without_a_lock() -> None:
    text = rendered(bound_statement(SHAPE, None, after=True))
    assert 'ORDER BY "order_id", "line" OFFSET %s LIMIT 1' in text
    assert "FOR SHARE" not in text and '("order_id", "line") > (' in text


def test_the_users_where_is_kept_apart_and_its_percent_signs_escaped() -> None:
    text = rendered(count_statement(SHAPE, "note LIKE 'a%' -- a comment", after=False))
    assert "(\nnote LIKE 'a%%' -- a comment\n) AND true" in text


def test_the_message_holds_every_column_with_its_type_and_the_key_names() -> None:
    text = rendered(message_expression(SHAPE, "s1"))
    assert "json_build_array('order_id', 'line')" in text
    assert (
        "json_build_array('note', 'character varying(20)', 1043, CASE WHEN "
        'num_nulls("note") = 1 THEN NULL ELSE format(\'%%s\', "note") END)' in text
    )
    assert "'snapshot', 's1', 'schema', 'public', 'table', 'lines'" in text
    assert "array_to_json(ARRAY[" in text  # not one call: functions take 100 arguments


def test_lock_keys_are_per_table_and_stable() -> None:
    assert lock_key("public.a") == lock_key("public.a") != lock_key("public.b")
    assert -(2**63) <= lock_key("public.a") < 2**63


# --- words -----------------------------------------------------------------------------


def test_the_plan_says_what_would_be_done() -> None:
    plan = Plan("s1", "public.lines", "note IS NULL", 500, 1234, progress("s1", rows=10), True)
    lines = plan_lines(plan, "public.cdc_bridge_snapshots")
    assert lines[0] == "snapshot of public.lines:"
    text = "\n".join(lines)
    assert "s1 (resuming after 10 rows in 1 chunk (last key 7, 2))" in text
    assert "note IS NULL" in text and "about 1,234 rows" in text and "500 rows each" in text
    assert "public.cdc_bridge_snapshots (created when missing)" in text


def test_progress_text() -> None:
    assert progress_text(500, 1000, 2.0) == "500 of about 1,000 rows (50%), 250 rows/s"
    assert progress_text(1200, 1000, 0.0) == "1,200 of about 1,200 rows (100%), 0 rows/s"


def test_role_sql_creates_the_progress_table_the_command_would() -> None:
    import re
    from pathlib import Path

    role_sql = (Path(__file__).parents[3] / "sql" / "role.sql").read_text()
    ddl = rendered(progress_table_ddl("public.cdc_bridge_snapshots"))

    def columns(text: str) -> list[str]:
        body = text.split("CREATE TABLE IF NOT EXISTS", 1)[1].split("PRIMARY KEY (", 1)
        return [" ".join(line.split()) for line in body[0].splitlines()[1:] if line.strip()]

    assert columns(role_sql) == columns(ddl)
    assert re.search(r"PRIMARY KEY \(snapshot_id, table_name\)", role_sql)
