"""A 1,000,000-row change table snapshotted through a running bridge (issue 32): every
row once in the stream, the command's and the bridge's memory bounded, and how long it
took. Slow (minutes): ``pytest -m slow tests/integration/test_snapshot_million.py -s``
prints the figures; SNAPSHOT_MILLION_ROWS=<n> runs it at another size.

The stream is read through an ordered push consumer and checked on the fly against a
bitmap of the keys (one byte per key), so the test holds no message: each of keys
1..N must come exactly once, as an R on the table's subject, with the Nats-Msg-Id of
its key, and nothing else is in the stream but the closing outbox event.

The memory figures are peaks (VmHWM of the bridge; ``wait4``'s ru_maxrss of the
command): asserted below a generous bound that a run holding the table would exceed by
far (the table's messages are about 100 bytes each: 1M of them as Python objects is
well over a gigabyte), never on time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import REPO_ROOT, BridgeProcess, MakeBridge, start_bridge
from support.nats_helpers import stream_info
from support.outbox import Event, bridge_config, insert_event
from support.snapshots import Seen, consume_stream
from support.waiting import wait_until

from cdc_bridge.cli.snapshot import PLAIN_PROGRESS_EVERY

ROWS = int(os.environ.get("SNAPSHOT_MILLION_ROWS", "1000000"))
TABLE = "public.accounts"
# Generous: the bridge idles at ~60 MB, the command at ~40 MB; holding 1M rows would not fit
PEAK_RSS_LIMIT_KIB = 400 * 1024


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def check_stream(url: str, stream: str, name: str, rows: int) -> tuple[bytearray, list[str]]:
    """Read the whole stream once: how often each key's R came, and what does not fit."""
    seen = bytearray(rows + 1)
    faults: list[str] = []
    prefix, subject = None, f"{name}.accounts.R"
    count = 0

    def check(message: Seen) -> None:
        nonlocal prefix, count
        count += 1
        msg_id = message.msg_id
        if message.subject == subject:
            head, _, key = msg_id.rpartition(":")
            prefix = prefix or head
            if head != prefix or not key.isdigit() or not 0 < int(key) <= rows:
                faults.append(f"message {count}: unexpected id {msg_id!r}")
            elif seen[int(key)] < 255:
                seen[int(key)] += 1
        elif not message.subject.endswith(".ticket.done"):
            faults.append(f"message {count}: unexpected subject {message.subject}")

    consume_stream(url, stream, check, timeout=1800)
    return seen, faults


def stored_messages(url: str, stream: str) -> int:
    return int(asyncio.run(stream_info(url, stream, timeout=30)).state.messages)


@pytest.mark.slow
def test_a_million_row_snapshot_through_a_running_bridge_every_row_once_in_bounded_memory(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.accounts (id int PRIMARY KEY, balance int NOT NULL, note text,"
            " opened timestamptz NOT NULL)"
        )
        conn.execute(
            "INSERT INTO public.accounts SELECT g, g * 10, 'account number ' || g,"
            " timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'"
            " FROM generate_series(1, %s) g",
            (ROWS,),
        )
        conn.execute("VACUUM ANALYZE public.accounts")
    config: dict[str, Any] = bridge_config(
        pg_dsn,
        nats_url,
        unique_name,
        outbox={"table": "public.outbox", "change_tables": [TABLE]},
        routes=[
            {"when": {"table": TABLE}, "subject": f"{unique_name}.accounts.{{action}}",
             "payload": "change"},
            {"subject": f"{unique_name}.{{aggregate_type}}.{{event_type}}"},
        ],
    )  # fmt: skip
    bridge: BridgeProcess = start_bridge(make_bridge, config)
    stream = unique_name.upper()
    config_path = tmp_path / "snapshot.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    started = time.monotonic()
    with (tmp_path / "out").open("w+") as out, (tmp_path / "err").open("w+") as err:
        command = subprocess.Popen(
            [sys.executable, "-m", "cdc_bridge", "snapshot", "--config", str(config_path),
             "--table", TABLE, "--id", "million", "--yes"],
            stdout=out, stderr=err, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        try:
            _, status, usage = os.wait4(command.pid, 0)
        finally:
            command.returncode = 0  # reaped by wait4 above; Popen must not wait again
        command_seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    assert os.waitstatus_to_exitcode(status) == 0, output + errors
    command_peak_kib = usage.ru_maxrss  # KiB on Linux
    progress_lines = [line for line in errors.splitlines() if line.strip()]

    with psycopg.connect(pg_dsn) as conn:
        insert_event(conn, Event(event_type="done"))
    wait_until(lambda: stored_messages(nats_url, stream) >= ROWS + 1, timeout=3600, interval=1,
               message="the stream never held every row")  # fmt: skip
    end_to_end = time.monotonic() - started
    bridge_peak_kib = peak_rss_kib(bridge.pid)
    info = asyncio.run(stream_info(nats_url, stream, timeout=30))

    read_started = time.monotonic()
    seen, faults = check_stream(nats_url, stream, unique_name, ROWS)
    read_seconds = time.monotonic() - read_started
    missing = [key for key in range(1, ROWS + 1) if seen[key] == 0]
    twice = [key for key in range(1, ROWS + 1) if seen[key] > 1]
    print(
        f"\nsnapshot of {ROWS:,} rows: command {command_seconds:.1f} s "
        f"({ROWS / command_seconds:,.0f} rows/s, peak RSS {command_peak_kib / 1024:.0f} MiB, "
        f"{len(progress_lines)} progress lines); all in the stream after {end_to_end:.1f} s "
        f"({ROWS / end_to_end:,.0f} rows/s end to end); bridge peak RSS "
        f"{bridge_peak_kib / 1024:.0f} MiB; stream {info.state.messages:,} messages, "
        f"{info.state.bytes / 2**20:.0f} MiB; read back in {read_seconds:.1f} s"
    )
    print(output.strip().splitlines()[-1] if output.strip() else "(no output)")
    for line in progress_lines[:3]:
        print("progress:", line)
    assert not faults, faults[:10]
    assert not missing, f"{len(missing)} rows missing, e.g. {missing[:10]}"
    assert not twice, f"{len(twice)} rows twice, e.g. {twice[:10]}"
    assert info.state.messages == ROWS + 1
    if command_seconds > 2 * PLAIN_PROGRESS_EVERY:  # a line every 5 s when not a terminal
        assert progress_lines, "no progress line on stderr"
    assert command_peak_kib < PEAK_RSS_LIMIT_KIB
    assert bridge_peak_kib < PEAK_RSS_LIMIT_KIB
