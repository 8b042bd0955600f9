"""cdc_bridge.inbox against a real nats-server and PostgreSQL: each event applied once,
each source transaction whole and in order, failures retried then parked, one applier
per consumer, a clean stop.

The stream is filled with nats-py, with the headers the bridge sets (support/inbox.py);
test_inbox_bridge.py runs a bridge end to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from support.inbox import (
    TIMEOUT,
    SourceTx,
    all_applied,
    applied_count,
    applied_rows,
    check_exactly_once_and_whole,
    connected,
    create_stream,
    make_transactions,
    prepare_database,
    publish,
    running,
    write_applied,
)
from support.waiting import wait_until_async

from cdc_bridge.inbox import Event, Handler, Inbox


def parked_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT consumer, first_stream_seq, last_stream_seq, msg_ids, error, attempts"
            " FROM cdc_inbox_parked ORDER BY id"
        ).fetchall()


async def test_each_transaction_applied_whole_once_and_in_order(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [1, 3, 7, 2, 1, 5, 4, 1, 9, 2])
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
        inbox = Inbox(nc, pg_dsn, stream=stream, durable="copy", handler=write_applied)
        async with running(inbox):
            await all_applied(pg_dsn, txs)
            more = make_transactions(u, [2, 3], first=len(txs) + 1)
            await publish(nc, more)  # while it runs
            await all_applied(pg_dsn, txs + more)
        check_exactly_once_and_whole(pg_dsn, txs + more)
        info = await nc.jetstream().consumer_info(stream, "copy")
        assert info.num_ack_pending == 0 and info.num_pending == 0


def only_a(tx: SourceTx) -> SourceTx:
    """What a consumer of the .a subjects sees of a transaction."""
    kept = [i for i, subject in enumerate(tx.subjects) if subject.endswith(".a")]
    return SourceTx(tx.lsn, tuple(tx.ids[i] for i in kept), tuple(tx.subjects[i] for i in kept))


async def test_a_subset_of_subjects_ends_transactions_at_the_next_lsn(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    """Reading only .a subjects, a transaction's Cdc-Tx-Last may be on a .b subject."""
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [2, 3, 4, 1, 6])
    seen = [only_a(tx) for tx in txs]
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
        inbox = Inbox(
            nc, pg_dsn, stream=stream, durable="a-only", subjects=[f"{u}.a"], handler=write_applied
        )
        async with running(inbox):
            # The last transaction ends on .b: it is applied when the next one starts.
            await all_applied(pg_dsn, seen[:-1])
            closing = make_transactions(u, [1], first=len(txs) + 1)
            await publish(nc, closing)
            await all_applied(pg_dsn, [*seen, *closing])
    check_exactly_once_and_whole(pg_dsn, [*seen, *closing])


async def test_a_replayed_message_is_skipped_and_acked(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    """The same Nats-Msg-Id stored again (after the stream's duplicate window): recorded
    ids are not handed over; a group with some new ids applies only those."""
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [3, 2])
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u, duplicate_window=0.5)
        await publish(nc, txs)
        inbox = Inbox(nc, pg_dsn, stream=stream, durable="copy", handler=write_applied)
        async with running(inbox):
            await all_applied(pg_dsn, txs)
            await asyncio.sleep(1.0)  # past the duplicate window: stored again
            again = SourceTx(txs[0].lsn, (*txs[0].ids, f"{u}-new"), (*txs[0].subjects, f"{u}.a"))
            await publish(nc, [again])
            await wait_until_async(
                lambda: any(row[0] == f"{u}-new" for row in applied_rows(pg_dsn)),
                timeout=TIMEOUT,
            )
            js = nc.jetstream()
            await wait_until_async(lambda: _no_ack_pending(js, stream, "copy"), timeout=TIMEOUT)
    ids = [row[0] for row in applied_rows(pg_dsn)]
    assert ids == [*txs[0].ids, *txs[1].ids, f"{u}-new"]


class Crash(Exception):
    """The process dies here (its connections go without a word)."""


async def _no_ack_pending(js: Any, stream: str, durable: str) -> bool:
    info = await js.consumer_info(stream, durable)
    return bool(info.num_ack_pending == 0 and info.num_pending == 0)


async def test_a_crash_between_commit_and_ack_changes_nothing(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [2, 4, 1, 3, 5, 2])
    commits = 0

    async def crash_after_third(events: Sequence[Event]) -> None:
        nonlocal commits
        commits += 1
        if commits == 3:
            raise Crash("after the commit, before the ack")

    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
    async with connected(nats_url) as nc:
        crashing = Inbox(
            nc, pg_dsn, stream=stream, durable="copy", handler=write_applied,
            after_commit=crash_after_third,
        )  # fmt: skip
        with pytest.raises(Crash):
            await asyncio.wait_for(crashing.run(), TIMEOUT)
    assert applied_count(pg_dsn) == 2 + 4 + 1  # three transactions committed, none acked
    async with connected(nats_url) as nc:
        inbox = Inbox(nc, pg_dsn, stream=stream, durable="copy", handler=write_applied)
        async with running(inbox):
            await all_applied(pg_dsn, txs)
    check_exactly_once_and_whole(pg_dsn, txs)


async def test_a_failing_handler_is_retried_then_parked_and_the_rest_applied(
    pg_dsn: str, nats_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [2, 3, 2, 1])
    poison = txs[1].ids[1]
    tries = 0

    async def handler(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        nonlocal tries
        await write_applied(conn, events)  # rolled back with the failure
        if any(event.msg_id == poison for event in events):
            tries += 1
            raise ValueError(f"cannot apply {poison}")

    caplog.set_level(logging.WARNING, logger="cdc_bridge.inbox")
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
        inbox = Inbox(
            nc, pg_dsn, stream=stream, durable="copy", handler=handler,
            max_attempts=3, backoff=(0.1, 0.2),
        )  # fmt: skip
        async with running(inbox):
            kept = [txs[0], txs[2], txs[3]]
            await all_applied(pg_dsn, kept)
            await wait_until_async(
                lambda: _no_ack_pending(nc.jetstream(), stream, "copy"), timeout=TIMEOUT
            )
    check_exactly_once_and_whole(pg_dsn, kept)
    assert tries == 3
    [(consumer, first, last, msg_ids, error, attempts)] = parked_rows(pg_dsn)
    assert (consumer, attempts, list(msg_ids)) == ("copy", 3, list(txs[1].ids))
    assert (first, last) == (3, 5)
    assert f"ValueError: cannot apply {poison}" in error
    retries = [r for r in caplog.records if "again in" in r.getMessage()]
    assert len(retries) == 2
    parked = [r for r in caplog.records if "parked" in r.getMessage()]
    assert len(parked) == 1 and parked[0].levelno == logging.ERROR


async def test_a_transaction_larger_than_the_window_is_applied_in_whole_parts(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    """max_in_flight 4, a transaction of 10: no deadlock; parts of 4, 4 and 2, in order,
    each in one consumer transaction."""
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [2, 10, 3])
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
        inbox = Inbox(
            nc, pg_dsn, stream=stream, durable="copy", handler=write_applied, max_in_flight=4
        )
        async with running(inbox):
            await all_applied(pg_dsn, txs)
    rows = applied_rows(pg_dsn)
    assert [row[0] for row in rows] == [i for tx in txs for i in tx.ids]
    sizes: dict[int, int] = {}
    for _id, _lsn, _seq, txid in rows:
        sizes[txid] = sizes.get(txid, 0) + 1
    assert list(sizes.values()) == [2, 4, 4, 2, 3]


async def test_one_event_at_a_time_when_asked(pg_dsn: str, nats_url: str, unique_name: str) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [3, 2])
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
        inbox = Inbox(
            nc, pg_dsn, stream=stream, durable="copy", handler=write_applied,
            whole_transactions=False,
        )  # fmt: skip
        async with running(inbox):
            await all_applied(pg_dsn, txs)
    rows = applied_rows(pg_dsn)
    assert len({row[3] for row in rows}) == 5


async def test_two_processes_on_one_durable_never_apply_an_event_twice(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    """The second waits (advisory lock) while the first applies, and takes over when it
    stops; the events published meanwhile are applied once, transactions whole."""
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    first_half = make_transactions(u, [3, 1, 4, 2, 5])
    middle = make_transactions(u, [2, 2, 3], first=6)
    second_half = make_transactions(u, [2, 6, 1, 3], first=9)
    by: dict[str, list[str]] = {"one": [], "two": []}

    def handler_of(name: str) -> Handler:
        async def handler(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
            await write_applied(conn, events)
            by[name].extend(event.msg_id for event in events)

        return handler

    async with connected(nats_url) as nc_one, connected(nats_url) as nc_two:
        await create_stream(nc_one, stream, u)
        one = Inbox(nc_one, pg_dsn, stream=stream, durable="copy", handler=handler_of("one"))
        two = Inbox(nc_two, pg_dsn, stream=stream, durable="copy", handler=handler_of("two"))
        async with running(one) as (one_task, one_stop):
            await publish(nc_one, first_half)
            await all_applied(pg_dsn, first_half)  # one holds the consumer
            async with running(two):
                await publish(nc_one, middle)
                await all_applied(pg_dsn, first_half + middle)
                assert not by["two"]  # it waits for the lock
                one_stop.set()
                await asyncio.wait_for(one_task, TIMEOUT)
                await publish(nc_two, second_half)
                await all_applied(pg_dsn, first_half + middle + second_half)
    everything = first_half + middle + second_half
    check_exactly_once_and_whole(pg_dsn, everything)
    assert by["one"] and by["two"]
    assert not set(by["one"]) & set(by["two"])


async def test_stop_returns_after_the_transaction_being_applied(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [2, 4, 3])
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        await write_applied(conn, events[:2])
        if events[0].cdc_lsn == txs[1].lsn:
            entered.set()
            await release.wait()  # stop is asked while this transaction is being applied
        await write_applied(conn, events[2:])

    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
        inbox = Inbox(nc, pg_dsn, stream=stream, durable="copy", handler=handler)
        async with running(inbox) as (task, stop):
            await asyncio.wait_for(entered.wait(), TIMEOUT)
            stop.set()
            release.set()
            await asyncio.wait_for(task, TIMEOUT)
    check_exactly_once_and_whole(pg_dsn, txs[:2])
