"""Issue 17: several bridges (one database each) into one stream, each in its own subject
space, under steady load, with a kill -9 of each bridge and a nats-server restart.

Each source must come through exact and in its own commit order, and each bridge's
failed sessions must be the faults' own: none caused by the other writer (an order
expectation the other bridge's messages broke).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from support.bridge import BridgeProcess, parse_json_line
from support.chaos import (
    Auditor,
    BridgeRunner,
    LoadGenerator,
    chaos_bridge_config,
    install_chaos_schema,
    read_stream,
)

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer

# 300 rows/s at 1-5 rows per transaction: about 100 transactions/s per database.
ROWS_PER_SECOND = 300.0
SETTLE = 5.0  # seconds after a fault left out of the steady latency figures


@dataclass
class Shard:
    name: str  # slot, publication and the subject space's token
    dsn: str
    bridge: BridgeRunner
    load: LoadGenerator


@pytest.fixture
def databases(pg_server: PostgresServer, unique_name: str) -> Iterator[Callable[[int], list[str]]]:
    made: list[str] = []

    def make(count: int) -> list[str]:
        dsns = []
        for n in range(count):
            name = f"db_{unique_name}_{n}"
            dsns.append(pg_server.create_database(name))
            install_chaos_schema(dsns[-1])
            made.append(name)
        return dsns

    yield make
    for name in made:
        pg_server.drop_database(name)


def _config(dsn: str, nats_url: str, stream_name: str, shard: str) -> dict[str, Any]:
    config = chaos_bridge_config(dsn=dsn, nats_url=nats_url, name=shard)
    nats_section = config["nats"]
    nats_section["stream"]["name"] = stream_name.upper()
    nats_section["stream"]["subjects"] = [f"{stream_name}.>"]
    # The space derived from the routes: stream_name.shard.>
    config["routes"] = [{"subject": f"{stream_name}.{shard}.{{aggregate_type}}.{{event_type}}"}]
    return config


def failed_sessions(runner: BridgeRunner) -> list[str]:
    return [
        str(record.get("error", ""))
        for bridge in runner.runs
        for record in map(parse_json_line, bridge.lines)
        if record is not None and record.get("event") == "session_failed"
    ]


def latencies(dsn: str, auditor: Auditor, faults: list[float]) -> tuple[list[float], list[float]]:
    """Seconds from each row's commit (created_at) to its store in the stream: all of
    them, and those of rows written away from the faults."""
    with psycopg.connect(dsn) as conn:
        created: dict[str, object] = dict(
            conn.execute("SELECT id::text, extract(epoch FROM created_at) FROM outbox").fetchall()
        )
    every, steady = [], []
    for message in auditor.stored_messages():
        at = created.get(message.msg_id)
        if at is None:
            continue
        latency = message.stored_at - float(str(at))
        every.append(latency)
        if not any(f - 1 <= float(str(at)) <= f + SETTLE for f in faults):
            steady.append(latency)
    return every, steady


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


@pytest.mark.parametrize(
    ("bridges", "rounds"),
    [
        pytest.param(2, 1, id="two"),
        pytest.param(1, 1, id="one-baseline", marks=pytest.mark.slow),
        pytest.param(2, 4, id="two-long", marks=pytest.mark.slow),
    ],
)
def test_bridges_sharing_a_stream_do_not_thrash(
    databases: Callable[[int], list[str]],
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    bridges: int,
    rounds: int,
) -> None:
    nats_server = isolated_nats_server
    shards = []
    for n, dsn in enumerate(databases(bridges)):
        name = f"{unique_name}s{n}"
        runner = BridgeRunner(make_bridge, _config(dsn, nats_server.url, unique_name, name))
        load = LoadGenerator(dsn, rows_per_second=ROWS_PER_SECOND, seed=chaos_seed + n)
        shards.append(Shard(name, dsn, runner, load))
    faults: list[float] = []
    for shard in shards:
        shard.bridge.start()
    for shard in shards:
        shard.load.start()
    try:
        for _ in range(rounds):
            for shard in shards:
                shard.load.wait_for_rows(600)
                faults.append(time.time())
                shard.bridge.kill()
                shard.bridge.start()
            shards[0].load.wait_for_rows(600)
            marks = [shard.bridge.current.mark() for shard in shards]
            faults.append(time.time())
            nats_server.restart()
            for shard, mark in zip(shards, marks, strict=True):
                shard.bridge.wait_streaming(since=mark, timeout=60)
        for shard in shards:
            shard.load.wait_for_rows(600)
    finally:
        reports = [shard.load.stop() for shard in shards]
    lines = []
    for shard, report in zip(shards, reports, strict=True):
        auditor = Auditor(
            shard.dsn, nats_server.url, unique_name.upper(), f"{unique_name}.{shard.name}.>"
        )
        result = auditor.audit(f"shared stream, bridge {shard.name}")
        Auditor.assert_clean(result, shard.bridge.notable_lines())
        assert result.committed == report.rows_committed
        failures = failed_sessions(shard.bridge)
        every, steady = latencies(shard.dsn, auditor, faults)
        lines.append(
            f"bridge {shard.name}: {result.committed} rows exact; {len(failures)} failed "
            f"sessions; latency p99 {p99(every) * 1000:.0f} ms overall, "
            f"{p99(steady) * 1000:.0f} ms away from the faults"
        )
        # The nats-server restart costs each bridge a session or two; the kills none (the
        # killed process logs nothing more). Nothing may come from the other writer.
        other_writer = [f for f in failures if "wrong last" in f]
        assert not other_writer, other_writer
        assert len(failures) <= 3 * rounds, failures
    print("\n".join(lines))


def test_overlapping_subject_spaces_are_refused_at_start_up_naming_both(
    databases: Callable[[int], list[str]],
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
) -> None:
    first_dsn, second_dsn = databases(2)
    first = BridgeRunner(make_bridge, _config(first_dsn, nats_url, unique_name, f"{unique_name}a"))
    first.start()
    scope = [r for r in first.current.json_records() if r.get("event") == "order_guard"]
    assert scope and scope[0]["scope"] == f"{unique_name}.{unique_name}a.>"
    load = LoadGenerator(first_dsn, rows_per_second=100.0)
    load.start()
    try:
        load.wait_for_rows(50)
    finally:
        load.stop()
    # The second bridge's space covers the whole stream, the first's space with it.
    config = _config(second_dsn, nats_url, unique_name, f"{unique_name}b")
    config["nats"]["subject_space"] = f"{unique_name}.>"
    second = make_bridge(config)
    assert second.wait_for_exit(30) == 1
    fatal = [r for r in second.json_records() if r.get("event") == "fatal"]
    assert len(fatal) == 1, "\n".join(second.lines)
    error = str(fatal[0]["error"])
    assert f"/{unique_name}a" in error and f"/{unique_name}b" in error, error
    assert "nats.subject_space" in error
    assert not any("Traceback" in line for line in second.lines)
    assert first.current.running  # the first bridge is left alone


@pytest.mark.parametrize(
    "seconds", [pytest.param(8, id="short"), pytest.param(60, id="minute", marks=pytest.mark.slow)]
)
def test_ten_bridges_into_one_stream(
    databases: Callable[[int], list[str]],
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    seconds: float,
) -> None:
    runners, loads = [], []
    for n, dsn in enumerate(databases(10)):
        config = _config(dsn, nats_url, unique_name, f"{unique_name}s{n}")
        runners.append(BridgeRunner(make_bridge, config))
        loads.append(LoadGenerator(dsn, rows_per_second=30.0, writers=1, seed=chaos_seed + n))
    for runner in runners:
        runner.start(wait_streaming=False)
    for runner in runners:
        runner.wait_streaming(timeout=60)
    for load in loads:
        load.start()
    try:
        time.sleep(seconds)
        # A restart with nine busy writers' messages in the stream: its tail read must
        # only read its own.
        runners[0].kill()
        restarted = runners[0].start()
    finally:
        reports = [load.stop() for load in loads]
    streaming = [r for r in restarted.json_records() if r.get("event") == "streaming"]
    lines = []
    for n, (runner, report) in enumerate(zip(runners, reports, strict=True)):
        auditor = Auditor(
            runner.config["postgres"]["dsn"],
            nats_url,
            unique_name.upper(),
            f"{unique_name}.{unique_name}s{n}.>",
        )
        result = auditor.audit(f"ten bridges, bridge {n}")
        Auditor.assert_clean(result, runner.notable_lines())
        assert result.committed == report.rows_committed
        failures = failed_sessions(runner)
        assert failures == [], failures
        lines.append(f"bridge {n}: {result.committed} rows exact, 0 failed sessions")
    record = streaming[0]
    lines.append(
        f"restarted bridge 0: tail read {record['tail_read']} messages in "
        f"{record['reconciled_in'] * 1000:.0f} ms (reconcile with the slot)"
    )
    print("\n".join(lines))
    assert record["tail_read"] <= 4096 + 64  # its own lookback, never the others'
    assert record["reconciled_in"] < 10


def test_one_database_sharded_by_outbox_table(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
) -> None:
    """Two bridges on one database, one outbox table (slot, publication) each, one
    stream: each table's rows arrive in its own space, in commit order."""
    with psycopg.connect(chaos_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.outbox_b (LIKE public.outbox INCLUDING ALL)")
    runners = []
    for shard, table in (("a", "public.outbox"), ("b", "public.outbox_b")):
        config = _config(chaos_dsn, nats_url, unique_name, f"{unique_name}{shard}")
        config["outbox"] = {"table": table}
        runners.append(BridgeRunner(make_bridge, config))
        runners[-1].start()
    expected: dict[str, list[str]] = {"outbox": [], "outbox_b": []}
    with psycopg.connect(chaos_dsn) as conn:
        for n in range(150):
            # Some transactions write both tables: each half goes through its own bridge.
            tables = ["outbox", "outbox_b"] if n % 3 == 0 else [("outbox", "outbox_b")[n % 2]]
            for table in tables:
                row = conn.execute(
                    f"INSERT INTO public.{table} (aggregate_type, aggregate_id, event_type,"
                    " payload) VALUES ('order', %s, 'created', '{}') RETURNING id::text",
                    (str(n),),
                ).fetchone()
                assert row is not None
                expected[table].append(str(row[0]))
            conn.commit()
    for shard, table in (("a", "outbox"), ("b", "outbox_b")):
        space = f"{unique_name}.{unique_name}{shard}.>"
        deadline = time.monotonic() + 30
        while True:
            stored = [
                m.msg_id
                for m in asyncio.run(read_stream(nats_url, unique_name.upper(), subjects=space))
            ]
            if len(stored) >= len(expected[table]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert stored == expected[table]
    for runner in runners:
        assert failed_sessions(runner) == []
