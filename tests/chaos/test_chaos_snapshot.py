"""Scenario: `cdc-bridge snapshot` of a table that a writer keeps changing, while the bridge
is killed with SIGKILL and restarted, and the snapshot command itself is killed with
SIGKILL mid-chunk and run again (it resumes after its last committed chunk). Issue 32.

The command is stopped deterministically: a test session holds a row lock (FOR UPDATE)
on a key ahead of it, so the command's chunk waits on that row with the rows before it
locked and their messages written but not committed; the command is killed there, the
lock released, and its orphaned backend aborts the chunk. The bridge is killed while the
command waits (so at least once per command kill) and at random points of its progress.

The stream is then checked as in tests/integration/test_snapshot_consistency.py: it is
replayed, in order, into a copy of the table as it was before the snapshot (I and U set
a key's row, D removes it) and every R must equal the copy's row at that point; the copy
must equal the table at the end (nothing lost, order kept); no Nats-Msg-Id is stored
twice; every row the writer never touched has exactly one R (one snapshot id for all).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
import yaml
from support.bridge import REPO_ROOT, BridgeProcess
from support.chaos import BridgeRunner, chaos_bridge_config
from support.outbox import Event, insert_event
from support.snapshots import Replay, Row, change_a_row, consume_stream, create_accounts, table_rows
from support.waiting import wait_until

TABLE = "public.accounts"
PROGRESS_TABLE = "public.cdc_bridge_snapshots"
OPS_APPLICATION = "cdc-bridge-ops"  # the snapshot command's application_name

# --- the table and its writer -----------------------------------------------------------


class Writer:
    """One thread of small transactions of inserts, updates and deletes over keys
    1..``top`` (never the ``spared`` keys, which the test locks), until stopped."""

    def __init__(self, dsn: str, top: int, spared: set[int], seed: int) -> None:
        self._dsn = dsn
        self._top = top
        self._spared = spared
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self.touched: set[int] = set()
        self.transactions = 0
        self.statements = 0
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the writer did not stop"
        if self.failure is not None:
            raise AssertionError(f"writer failed: {self.failure!r}") from self.failure

    def _run(self) -> None:
        rng = self._rng
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    with conn.transaction():
                        for _ in range(rng.randint(1, 4)):
                            key = rng.randint(1, self._top)
                            if key in self._spared:
                                continue
                            self.touched.add(key)
                            self.statements += 1
                            change_a_row(conn, rng, key)
                    self.transactions += 1
                    self._stop.wait(0.01)  # about 100 transactions a second at most
        except BaseException as exc:  # re-raised by stop() in the test thread
            self.failure = exc


# --- the snapshot command -----------------------------------------------------------------


@dataclass
class SnapshotCommand:
    """``cdc-bridge snapshot`` run as an operator runs it, again and again."""

    config_path: Path
    args: tuple[str, ...]
    runs: list[subprocess.Popen[str]] = field(default_factory=list)
    outputs: list[tuple[int, str, str]] = field(default_factory=list)

    def spawn(self) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "cdc_bridge", "snapshot", "--config",
             str(self.config_path), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        self.runs.append(process)
        return process

    def kill(self) -> None:
        process = self.runs[-1]
        process.send_signal(signal.SIGKILL)
        out, err = process.communicate(timeout=30)
        self.outputs.append((process.returncode, out, err))

    def finish(self, timeout: float) -> tuple[int, str, str]:
        process = self.runs[-1]
        out, err = process.communicate(timeout=timeout)
        self.outputs.append((process.returncode, out, err))
        return process.returncode, out, err

    def close(self) -> None:
        for process in self.runs:
            if process.poll() is None:
                process.kill()
                process.communicate()


def progress_rows(dsn: str) -> tuple[int, bool]:
    """Rows the table's snapshot has committed, and whether it finished."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (PROGRESS_TABLE,)).fetchone()
        if not found or not found[0]:
            return 0, False
        row = conn.execute(
            f"SELECT rows, finished_at IS NOT NULL FROM {PROGRESS_TABLE} WHERE table_name = %s",
            (TABLE,),
        ).fetchone()
    return (0, False) if row is None else (int(row[0]), bool(row[1]))


def ops_backends(dsn: str, *, blocked_by: int | None = None) -> list[int]:
    """The snapshot command's server sessions in this database (``blocked_by``: those
    waiting on a lock that this backend holds: not on a writer's row, briefly)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = current_database()"
            " AND (%s::int IS NULL OR %s::int = ANY (pg_blocking_pids(pid)))",
            (OPS_APPLICATION, blocked_by, blocked_by),
        ).fetchall()
    return [int(r[0]) for r in rows]


def reached_or_blocked(dsn: str, rows: int, lock: RowLock) -> bool:
    """The snapshot committed ``rows`` rows, or its chunk waits on ``lock``."""
    return progress_rows(dsn)[0] >= rows or bool(ops_backends(dsn, blocked_by=lock.pid))


@dataclass
class RowLock:
    """A session holding FOR UPDATE on one row: a chunk reaching it waits."""

    dsn: str
    key: int
    conn: psycopg.Connection[Any] | None = None

    @property
    def pid(self) -> int:
        assert self.conn is not None
        return self.conn.info.backend_pid

    def take(self) -> None:
        self.conn = psycopg.connect(self.dsn)
        self.conn.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (self.key,))

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


# --- the scenario -------------------------------------------------------------------------


@pytest.fixture
def snapshot_command(
    tmp_path: Path,
) -> Iterator[Callable[[dict[str, Any], tuple[str, ...]], SnapshotCommand]]:
    made: list[SnapshotCommand] = []

    def make(config: dict[str, Any], args: tuple[str, ...]) -> SnapshotCommand:
        path = tmp_path / "snapshot.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        command = SnapshotCommand(path, args)
        made.append(command)
        return command

    yield make
    for command in made:
        command.close()


def snapshot_config(dsn: str, nats_url: str, name: str) -> dict[str, Any]:
    config = chaos_bridge_config(dsn=dsn, nats_url=nats_url, name=name)
    config["outbox"]["change_tables"] = [TABLE]
    config["routes"] = [
        {"when": {"table": TABLE}, "subject": f"{name}.accounts.{{action}}", "payload": "change"},
        *config["routes"],
    ]
    return config


@pytest.mark.parametrize(
    ("rows", "chunk", "command_kills", "batch_max"),
    [
        pytest.param(3000, 20, 2, None, id="short"),
        pytest.param(20000, 50, 5, None, id="long", marks=pytest.mark.slow),
        # each chunk's transaction published in several batches: kills land inside one
        pytest.param(3000, 50, 2, 7, id="split", marks=pytest.mark.slow),
    ],
)
def test_snapshot_and_bridge_killed_beside_a_writer(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    snapshot_command: Callable[[dict[str, Any], tuple[str, ...]], SnapshotCommand],
    chaos_seed: int,
    rows: int,
    chunk: int,
    command_kills: int,
    batch_max: int | None,
) -> None:
    rng = random.Random(chaos_seed)
    started = time.monotonic()
    create_accounts(chaos_dsn, rows)
    config = snapshot_config(chaos_dsn, nats_url, unique_name)
    if batch_max is not None:
        config["nats"]["batch_max_messages"] = batch_max
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()  # the slot: the command requires it
    before = table_rows(chaos_dsn)

    # Where the command is stopped: keys spread over the table, which the writer spares
    stops = [rows * (n + 1) // (command_kills + 1) + rng.randint(-chunk, chunk)
             for n in range(command_kills)]  # fmt: skip
    locks = [RowLock(chaos_dsn, key) for key in stops]
    for lock in locks:
        lock.take()
    writer = Writer(chaos_dsn, rows + rows // 10, set(stops), chaos_seed)
    command = snapshot_command(config, ("--table", TABLE, "--chunk", str(chunk), "--yes"))
    bridge_kills = 0

    def kill_bridge() -> None:
        nonlocal bridge_kills
        bridge.kill()
        bridge_kills += 1
        bridge.start(wait_streaming=rng.random() < 0.5)

    try:
        writer.start()
        for lock in locks:
            command.spawn()
            # somewhere on the way to the locked row, the bridge dies too
            at = rng.randint(0, max(0, (lock.key - chunk) * 9 // 10))
            wait_until(partial(reached_or_blocked, chaos_dsn, at, lock), timeout=120, interval=0.02)
            kill_bridge()
            # the chunk holding the locked row waits for it, its earlier rows written
            backend = wait_until(partial(ops_backends, chaos_dsn, blocked_by=lock.pid), timeout=120)
            bridge.wait_streaming(timeout=60)  # this one dies while it streams
            time.sleep(rng.uniform(0, 0.5))
            kill_bridge()
            command.kill()
            lock.release()  # the orphaned backend goes on, finds its client gone, aborts
            wait_until(lambda: not ops_backends(chaos_dsn), timeout=60,
                       message=f"the killed command's backend {backend} stayed")  # fmt: skip
        command.spawn()  # resumes after the last committed chunk, and finishes
        done_rows = progress_rows(chaos_dsn)[0]
        at = rng.randint(done_rows, rows)
        try:
            wait_until(lambda: progress_rows(chaos_dsn)[0] >= at or command.runs[-1].poll()
                       is not None, timeout=120, interval=0.02)  # fmt: skip
        finally:
            kill_bridge()
        code, out, err = command.finish(timeout=300)
        assert code == 0, out + err
        assert progress_rows(chaos_dsn)[1]
    finally:
        for lock in locks:
            lock.release()
        writer.stop()
    bridge.wait_streaming(timeout=60)
    with psycopg.connect(chaos_dsn) as conn:
        final_id = insert_event(conn, Event(aggregate_id="A-1", event_type="done"))
    stream = unique_name.upper()
    try:
        wait_until(partial(_has_id, nats_url, stream, unique_name, final_id), timeout=180,
                   interval=0.5, message="the last event never arrived")  # fmt: skip
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{bridge.notable_lines()}") from None

    audit = Replay(dict(before), f"{unique_name}.accounts.")
    stored = consume_stream(nats_url, stream, audit.see, timeout=300)
    now = table_rows(chaos_dsn)
    elapsed = time.monotonic() - started
    print(
        f"snapshot chaos ({rows} rows, chunk {chunk}): {len(audit.reads)} rows read (R), "
        f"{audit.changes} changes beside them ({writer.transactions} writer txs, "
        f"{len(writer.touched)} keys touched), stream {stored} messages, "
        f"{bridge_kills} bridge kill -9, {command_kills} snapshot command kill -9 "
        f"({len(command.runs)} runs), {elapsed:.1f} s"
    )
    assert not audit.faults, "\n".join(audit.faults[:10]) + "\n" + bridge.notable_lines()
    assert not audit.duplicate_ids, f"ids stored twice: {list(audit.duplicate_ids)[:10]}"
    assert audit.copy == now, _diff(audit.copy, now)  # every change arrived, in order
    assert all(count == 1 for count in audit.reads.values())
    assert len(audit.snapshot_ids) == 1, audit.snapshot_ids  # the resumed runs kept the id
    untouched = set(before) - writer.touched
    assert untouched and untouched <= set(audit.reads), sorted(untouched - set(audit.reads))[:10]
    assert bridge_kills >= 2 * command_kills + 1


def _has_id(url: str, stream: str, name: str, msg_id: str) -> bool:
    async def last() -> str:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
        try:
            try:
                msg = await nc.jetstream(timeout=10).get_last_msg(stream, f"{name}.ticket.done")
            except nats.js.errors.NotFoundError:
                return ""
            return str((msg.headers or {}).get("Nats-Msg-Id", ""))
        finally:
            await nc.close()

    return asyncio.run(last()) == msg_id


def _diff(copy: dict[int, Row], now: dict[int, Row]) -> str:
    keys = sorted(k for k in set(copy) | set(now) if copy.get(k) != now.get(k))
    return f"{len(keys)} keys differ: " + ", ".join(
        f"{k}: stream {copy.get(k)} table {now.get(k)}" for k in keys[:10]
    )
