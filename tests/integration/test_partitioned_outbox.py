"""A partitioned outbox table through real PostgreSQL and NATS (issue 20, part 4).

The publication is created with publish_via_partition_root, so every event is routed as
the root table (`table`, Cdc-Table), a partition created or attached while the bridge
runs is streamed without a restart, and dropping an old partition (the housekeeping of a
time-partitioned outbox) leaves the bridge streaming. A publication made without the
setting, and wal2json (which names changes after their partition), stop `run` at
start-up with the fix; `check` verifies the setting.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import STARTUP_TIMEOUT, MakeBridge, parse_json_line, start_bridge
from support.outbox import bridge_config, duplicated_ids, wait_for_ids

from cdc_bridge.cli.main import main as cli_main
from cdc_bridge.outbox import emit

TABLE = "public.events"
PARTITIONED_OUTBOX = """
CREATE TABLE public.events (
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE public.events_2026_01 PARTITION OF public.events
    FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
"""


@pytest.fixture
def partitioned_dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(PARTITIONED_OUTBOX)
    return pg_dsn


def config_for(dsn: str, nats_url: str, u: str, **overrides: Any) -> dict[str, Any]:
    routes = [
        {
            "name": "events",
            "when": {"table": TABLE},
            "subject": f"{u}.{{aggregate_type}}.{{event_type}}",
            "headers": {"Source-Table": "{table}"},
        }
    ]
    # pgoutput whatever CDC_BRIDGE_TEST_PLUGIN says: wal2json refuses partitioned tables.
    overrides.setdefault("postgres", {"plugin": "pgoutput"})
    return bridge_config(
        dsn, nats_url, u, outbox={"table": TABLE}, routes=routes,
        dead_letter={"subject": f"{u}.dlq"}, **overrides,
    )  # fmt: skip


def insert(dsn: str, month: str, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(dsn) as conn:
        for n, row_id in enumerate(ids):
            conn.execute(
                "INSERT INTO public.events"
                " (id, aggregate_type, aggregate_id, event_type, payload, created_at)"
                " VALUES (%s, 'order', 'O-1', %s, %s::jsonb, %s::timestamptz)",
                (row_id, f"m{month.replace('-', '')}", json.dumps({"n": n}), f"{month}-15"),
            )
    return ids


def test_events_are_routed_as_the_root_and_new_partitions_need_no_restart(
    partitioned_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    u = unique_name
    bridge = start_bridge(make_bridge, config_for(partitioned_dsn, nats_url, u))
    with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
        pubviaroot = conn.execute(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (u,)
        ).fetchone()
    assert pubviaroot == (True,)

    january = insert(partitioned_dsn, "2026-01", 3)
    wait_for_ids(nats_url, u.upper(), january, timeout=30)
    # While the bridge runs: a partition created in place, and one attached.
    with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.events_2026_02 PARTITION OF public.events"
            " FOR VALUES FROM ('2026-02-01') TO ('2026-03-01')"
        )
        conn.execute("CREATE TABLE public.events_2026_03 (LIKE public.events INCLUDING ALL)")
        conn.execute(
            "ALTER TABLE public.events ATTACH PARTITION public.events_2026_03"
            " FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')"
        )
    february = insert(partitioned_dsn, "2026-02", 3)
    march = insert(partitioned_dsn, "2026-03", 3)
    # Housekeeping: the oldest partition goes, the bridge keeps streaming.
    with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.events DETACH PARTITION public.events_2026_01")
        conn.execute("DROP TABLE public.events_2026_01")
    after_drop = insert(partitioned_dsn, "2026-03", 2)

    every_id = [*january, *february, *march, *after_drop]
    messages = wait_for_ids(nats_url, u.upper(), every_id, timeout=30)
    assert duplicated_ids(messages) == {}
    assert [m.headers["Nats-Msg-Id"] for m in messages] == every_id  # commit order kept
    assert {m.headers["Cdc-Table"] for m in messages} == {TABLE}
    assert {m.headers["Source-Table"] for m in messages} == {TABLE}
    assert [m.subject for m in messages] == [
        *[f"{u}.order.m202601"] * 3, *[f"{u}.order.m202602"] * 3, *[f"{u}.order.m202603"] * 5,
    ]  # fmt: skip
    assert bridge.running


def fatal_error(make_bridge: MakeBridge, config: dict[str, Any]) -> str:
    bridge = make_bridge(config)
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    records = [parse_json_line(line) for line in bridge.lines]
    assert None not in records, "\n".join(bridge.lines)  # no traceback
    [fatal] = [r for r in records if r and r["event"] == "fatal"]
    return str(fatal["error"])


def check_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config: dict[str, Any]
) -> tuple[int, str]:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    code = cli_main(["check", "--config", str(path)])
    return code, capsys.readouterr().out


def test_a_publication_without_via_root_stops_run_and_fails_check(
    partitioned_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    u = unique_name
    with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE PUBLICATION {u} FOR TABLE public.events WITH (publish = 'insert')")
    config = config_for(partitioned_dsn, nats_url, u)
    fix = f"ALTER PUBLICATION {u} SET (publish_via_partition_root = true)"

    assert fatal_error(make_bridge, config) == (
        f"postgres.publication: {TABLE} is partitioned, and publication {u} does not "
        "publish via the partition root: its events would arrive named as its partitions "
        f"(fix: {fix})"
    )
    code, out = check_output(capsys, tmp_path, config)
    assert code == 1
    [line] = [line for line in out.splitlines() if "postgres.publication" in line]
    assert line.startswith("FAIL") and "does not publish via the partition root" in line, out
    assert fix in out, out

    with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
        conn.execute(fix)
    code, out = check_output(capsys, tmp_path, config)
    [line] = [line for line in out.splitlines() if "postgres.publication" in line]
    assert line.startswith("ok") and f"via the partition root of {TABLE}" in line, out


def test_wal2json_refuses_a_partitioned_outbox(
    partitioned_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = config_for(partitioned_dsn, nats_url, unique_name, postgres={"plugin": "wal2json"})
    assert fatal_error(make_bridge, config) == (
        f"postgres.plugin: {TABLE} is a partitioned table, and wal2json names each change "
        "after its partition and cannot cover partitions attached later (fix: use plugin "
        "pgoutput (the publication then publishes via the partition root))"
    )


def test_init_creates_the_publication_via_the_root(
    partitioned_dsn: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    u = unique_name
    path = tmp_path / "init.yaml"
    path.write_text(yaml.safe_dump(config_for(partitioned_dsn, nats_url, u), sort_keys=False))
    capsys.readouterr()
    assert cli_main(["init", "--config", str(path)]) == 0, capsys.readouterr().out
    with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (u,))
        assert row.fetchone() == (True,)


SHIPPED_SQL = Path(__file__).resolve().parents[2] / "sql" / "outbox_partitioned.sql"


def insert_today(dsn: str, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(dsn) as conn:
        for row_id in ids:
            conn.execute(
                "INSERT INTO public.events (id, aggregate_type, aggregate_id, event_type, payload)"
                " VALUES (%s, 'order', 'O-1', 'placed', '{}')",
                (row_id,),
            )
    return ids


def test_dropping_partitions_as_housekeeping_loses_nothing(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    """sql/outbox_partitioned.sql's daily partitions, dropped by its procedure while
    events in them are not published yet: they still arrive, once, in order."""
    u = unique_name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SHIPPED_SQL.read_text())
    config = config_for(pg_dsn, nats_url, u)
    bridge = start_bridge(make_bridge, config)
    streamed = insert_today(pg_dsn, 3)
    wait_for_ids(nats_url, u.upper(), streamed, timeout=30)
    bridge.terminate()

    unpublished = insert_today(pg_dsn, 2)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CALL public.events_maintain(keep => interval '-5 days')")  # drops all
        left = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.events'::regclass"
        )
        assert left.fetchone() == (0,)
        conn.execute("CALL public.events_maintain()")  # today's and the next two again
    later = insert_today(pg_dsn, 1)
    with psycopg.connect(pg_dsn) as conn:  # the application library, unchanged
        emitted = emit(
            conn, aggregate_type="order", aggregate_id="O-2", event_type="placed",
            payload={"n": 1}, table=TABLE,
        )  # fmt: skip
    later.append(str(emitted))

    start_bridge(make_bridge, config)
    every_id = [*streamed, *unpublished, *later]
    messages = wait_for_ids(nats_url, u.upper(), every_id, timeout=30)
    assert duplicated_ids(messages) == {}
    assert [m.headers["Nats-Msg-Id"] for m in messages] == every_id
    assert {m.headers["Cdc-Table"] for m in messages} == {TABLE}
