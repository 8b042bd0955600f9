"""Pruning cdc_inbox against a real nats-server and PostgreSQL: the horizon is the
stream's duplicate window and the consumer's position, both computed by prune_inbox;
what is pruned never comes back; `cdc-bridge inbox prune` says it in one line.

Ages are made by moving applied_at back in the database, never by sleeping.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys

import psycopg
from support.inbox import (
    all_applied,
    check_exactly_once_and_whole,
    connected,
    create_stream,
    make_transactions,
    prepare_database,
    publish,
    running,
    write_applied,
)
from support.paths import REPO

from cdc_bridge.inbox import Inbox, prune_inbox

WINDOW = 600.0  # the stream's duplicate window, in seconds


def inbox_seqs(dsn: str, consumer: str = "copy") -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT stream_seq FROM cdc_inbox WHERE consumer = %s ORDER BY stream_seq",
            (consumer,),
        ).fetchall()
    return [row[0] for row in rows]


def age_rows(dsn: str, *, up_to_seq: int, by: str) -> None:
    """Make the rows at or below a sequence look recorded ``by`` ago."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE cdc_inbox SET applied_at = now() - %s::interval WHERE stream_seq <= %s",
            (by, up_to_seq),
        )


async def test_prune_takes_what_is_past_the_window_and_at_or_below_the_position(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    old = make_transactions(u, [2, 3, 1])  # sequences 1..6
    young = make_transactions(u, [2, 2], first=4)  # 7..10
    later = make_transactions(u, [3, 1], first=6)  # 11..14
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u, duplicate_window=WINDOW)
        inbox = Inbox(nc, pg_dsn, stream=stream, durable="copy", handler=write_applied)
        async with running(inbox):
            await publish(nc, old + young)
            await all_applied(pg_dsn, old + young)
        age_rows(pg_dsn, up_to_seq=6, by="1 hour")  # past the window; 7..10 are not

        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            dry = await prune_inbox(conn, nc, stream=stream, consumer="copy", dry_run=True)
            assert (dry.rows, dry.up_to_seq, dry.dry_run) == (6, 10, True)
            assert inbox_seqs(pg_dsn) == list(range(1, 11))  # a dry run deletes nothing

            longer = await prune_inbox(
                conn, nc, stream=stream, consumer="copy", older_than=datetime.timedelta(hours=2)
            )
            assert longer.rows == 0  # kept longer than the window when asked

            done = await prune_inbox(conn, nc, stream=stream, consumer="copy", batch_size=4)
            assert done.rows == 6
            assert inbox_seqs(pg_dsn) == list(range(7, 11))

            # Above the position stays, however old (e.g. a position moved back by hand).
            age_rows(pg_dsn, up_to_seq=10, by="1 hour")
            await conn.execute("UPDATE cdc_inbox_position SET stream_seq = 8")
            assert (await prune_inbox(conn, nc, stream=stream, consumer="copy")).rows == 2
            assert inbox_seqs(pg_dsn) == [9, 10]
            await conn.execute("UPDATE cdc_inbox_position SET stream_seq = 10")

            nobody = await prune_inbox(conn, nc, stream=stream, consumer="nobody")
            assert nobody.up_to_seq is None and nobody.rows == 0
            assert "no position" in nobody.why_none

        # What was pruned is never handed over again; the rest goes on as before.
        async with running(inbox):
            await publish(nc, later)
            await all_applied(pg_dsn, old + young + later)
    check_exactly_once_and_whole(pg_dsn, old + young + later)


async def test_a_position_in_an_earlier_stream_prunes_nothing(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [2, 2])
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u, duplicate_window=WINDOW)
        inbox = Inbox(nc, pg_dsn, stream=stream, durable="copy", handler=write_applied)
        async with running(inbox):
            await publish(nc, txs)
            await all_applied(pg_dsn, txs)
        age_rows(pg_dsn, up_to_seq=4, by="1 hour")
        await nc.jetstream().delete_stream(stream)
        await create_stream(nc, stream, u, duplicate_window=WINDOW)  # made again
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            result = await prune_inbox(conn, nc, stream=stream, consumer="copy")
    assert result.rows == 0 and result.up_to_seq is None
    assert "earlier stream" in result.why_none
    assert inbox_seqs(pg_dsn) == [1, 2, 3, 4]


# --- cdc-bridge inbox prune ----------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_bridge", "inbox", "prune", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def fill(dsn: str, nats_url: str, stream: str, prefix: str) -> None:
    """Five recorded rows an hour old, the position at sequence 3, in a stream of five."""

    async def run() -> None:
        async with connected(nats_url) as nc:
            await create_stream(nc, stream, prefix, duplicate_window=WINDOW)
            await publish(nc, make_transactions(prefix, [5]))
            created = (await nc.jetstream().stream_info(stream)).created
        prepare_database(dsn)
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO cdc_inbox (consumer, msg_id, stream_seq, applied_at)"
                " SELECT 'copy', 'id-' || s, s, now() - interval '1 hour'"
                " FROM generate_series(1, 5) AS s"
            )
            conn.execute(
                "INSERT INTO cdc_inbox_position (consumer, stream, stream_created, stream_seq)"
                " VALUES ('copy', %s, %s, 3)",
                (stream, created),
            )

    asyncio.run(run())


def test_the_command_prints_the_count_and_a_dry_run_deletes_nothing(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    stream = unique_name.upper()
    fill(pg_dsn, nats_url, stream, unique_name)
    target = ["--dsn", pg_dsn, "--nats", nats_url, "--stream", stream, "--consumer", "copy"]
    dry = cli(*target, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 3 rows" in dry.stdout and "at or below stream sequence 3" in dry.stdout
    assert inbox_seqs(pg_dsn) == [1, 2, 3, 4, 5]
    done = cli(*target, "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    assert "deleted 3 rows" in done.stdout
    assert inbox_seqs(pg_dsn) == [4, 5]
    nobody = cli(*target[:-1], "nobody")
    assert nobody.returncode == 0
    assert (
        nobody.stdout.strip()
        == f"nothing to prune: consumer nobody has no position in stream {stream}"
    )


def test_the_command_fails_in_one_line_without_secrets(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    stream = unique_name.upper()
    fill(pg_dsn, nats_url, stream, unique_name)
    base = ["--stream", stream, "--consumer", "copy"]
    cases = {
        "no stream": (
            cli("--dsn", pg_dsn, "--nats", nats_url, "--stream", "NOSUCH", "--consumer", "c"),
            "no stream named NOSUCH",
        ),
        "postgres": (
            cli("--dsn", "postgresql://app:Sekr1tPw@127.0.0.1:1/app", "--nats", nats_url, *base),
            "PostgreSQL",
        ),
        "nats": (
            cli("--dsn", pg_dsn, "--nats", "nats://app:Sekr1tPw@127.0.0.1:1", *base),
            "NATS: cannot connect",
        ),
    }
    for name, (result, expected) in cases.items():
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (name, result.stderr)
        assert "Sekr1tPw" not in result.stdout + result.stderr, name
        assert "Traceback" not in result.stderr
    bad_age = cli("--dsn", pg_dsn, "--nats", nats_url, *base, "--older-than", "7")
    assert bad_age.returncode == 2 and "give a unit" in bad_age.stderr
    assert inbox_seqs(pg_dsn) == [1, 2, 3, 4, 5]
