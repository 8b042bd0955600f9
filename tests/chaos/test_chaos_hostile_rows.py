"""Scenario: hostile rows committed between good rows under load, the bridge killed (SIGKILL)
again and again (issue 27).

A second writer commits, in the load's commit order, transactions of a good row, a hostile
row and another good row: an id with CR/LF header injection, a lone surrogate in a json
headers column, a subject token over the control line, headers over 64 KB, a payload the
bridge's own headers push over max_payload, and the bridge's own header names in the
headers column (not hostile enough to dead-letter: those names are dropped). Every good
row must arrive exactly once in commit order, every hostile row exactly once on the
dead-letter subject with its reason, no message may carry a header the bridge did not
mean, and no hostile row may fail a session or stop the bridge: only the kills restart it.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.bridge import BridgeProcess
from support.chaos import (
    COMMIT_ORDER_LOCK,
    Auditor,
    BridgeRunner,
    DeadLetters,
    ExpectedDeadLetter,
    LoadGenerator,
    chaos_bridge_config,
)
from support.hostile import ALLOWED_HEADERS, MAX_PAYLOAD
from support.nats_helpers import nats_with_max_payload

from cdc_bridge.core.wire_text import sendable_id, subject_limit
from cdc_bridge.dev.nats_server import NatsServer

INJECTED = "\r\nInjected-Hdr: yes\r\n\r\nNats-Expected-Last-Sequence: 1"
KINDS = ("id", "surrogate", "token", "headers", "edge", "forged")


@pytest.fixture
def roomy_nats(devstack_tmp: Path) -> Iterator[NatsServer]:
    with nats_with_max_payload(devstack_tmp, MAX_PAYLOAD) as server:
        yield server


class HostileWriter:
    """Commits [good, hostile, good] transactions in the load's commit order (the same lock
    and sequence as LoadGenerator), cycling through KINDS; remembers what each hostile row
    must become. PostgreSQL is not disturbed here: a failed commit fails the test."""

    def __init__(self, dsn: str, *, interval: float = 0.2) -> None:
        self._dsn = dsn
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile", daemon=True)
        self.expected: dict[str, ExpectedDeadLetter] = {}  # row id -> its dead letter
        self.forged: list[str] = []  # good rows whose headers column set the bridge's names
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the hostile writer did not stop"
        if self._failure is not None:
            raise AssertionError("hostile writer failed") from self._failure

    def _run(self) -> None:
        try:
            with psycopg.connect(self._dsn) as conn:
                n = 0
                while not self._stop.wait(self._interval):
                    self._one_transaction(conn, n, KINDS[n % len(KINDS)])
                    n += 1
        except BaseException as exc:  # re-raised by stop() in the test thread
            self._failure = exc

    def _one_transaction(self, conn: psycopg.Connection[Any], n: int, kind: str) -> None:
        row = conn.execute(
            "SELECT nextval('chaos_txn_no') FROM (SELECT pg_advisory_xact_lock(%s)) AS held",
            (COMMIT_ORDER_LOCK,),
        ).fetchone()
        assert row is not None
        txn = int(row[0])

        def good(idx: int, hdrs: str | None = None) -> str:
            return self._insert(conn, payload=json.dumps({"txn": txn, "idx": idx}), hdrs=hdrs)

        good(0)
        expected: ExpectedDeadLetter | None = None
        if kind == "id":
            aggregate_id = f"x{n}{INJECTED}"  # unique: the dead letter's id derives from it
            row_id = self._insert(conn, aggregate_type="hostile_id", aggregate_id=aggregate_id)
            expected = ExpectedDeadLetter(
                sendable_id(aggregate_id), "cannot be sent as Nats-Msg-Id"
            )
        elif kind == "surrogate":
            row_id = self._insert(conn, hdrs='{"X-A": "bad \\ud800 text"}')
            expected = ExpectedDeadLetter(row_id, "unsafe value for header 'X-A'")
        elif kind == "token":
            row_id = self._insert(conn, event_type="t" * (subject_limit() + 100))
            expected = ExpectedDeadLetter(row_id, "control line leaves for it")
        elif kind == "headers":
            row_id = self._insert(conn, hdrs=json.dumps({"X-Big": "y" * 70_000}))
            expected = ExpectedDeadLetter(row_id, "exceed the server's 65535")
        elif kind == "edge":
            # Fits the router's estimate, not with the Cdc-* headers the bridge adds.
            row_id = str(uuid.uuid4())
            room = MAX_PAYLOAD - len("NATS/1.0\r\n\r\n") - len(f"Nats-Msg-Id: {row_id}\r\n")
            self._insert(conn, row_id=row_id, payload=json.dumps("x" * (room - 2)))
            expected = ExpectedDeadLetter(row_id, "exceeds the server's max_payload")
        else:  # forged: delivered, the bridge's names left out
            self.forged.append(
                good(1, hdrs='{"Cdc-Error": "forged", "cdc-lsn": "0/0", "X-Ok": "1"}')
            )
        good(2)
        conn.commit()
        self.counts[kind] += 1
        if expected is not None:
            self.expected[row_id] = expected

    @staticmethod
    def _insert(
        conn: psycopg.Connection[Any],
        *,
        row_id: str | None = None,
        aggregate_type: str = "hostile",
        aggregate_id: str = "H-1",
        event_type: str = "created",
        payload: str = "{}",
        hdrs: str | None = None,
    ) -> str:
        row_id = row_id or str(uuid.uuid4())
        conn.execute(
            "INSERT INTO public.outbox"
            " (id, aggregate_type, aggregate_id, event_type, payload, hdrs)"
            " VALUES (%s, %s, %s, %s, %s::jsonb, %s::json)",
            (row_id, aggregate_type, aggregate_id, event_type, payload, hdrs),
        )
        return row_id


def hostile_config(dsn: str, nats_url: str, name: str) -> dict[str, Any]:
    config = chaos_bridge_config(dsn=dsn, nats_url=nats_url, name=name)
    config["outbox"] = {"table": "public.outbox", "headers_column": "hdrs"}
    config["routes"] = [
        {"name": "hostile_id", "when": {"aggregate_type": "hostile_id"},
         "subject": f"{name}.hid", "id": "aggregate_id"},
        {"subject": name + ".{aggregate_type}.{event_type}"},
    ]  # fmt: skip
    config["dead_letter"] = {"subject": f"{name}.dlq"}
    return config


@pytest.mark.parametrize(
    "kills", [pytest.param(4, id="short"), pytest.param(10, id="long", marks=pytest.mark.slow)]
)
def test_hostile_rows_between_good_rows_under_load_with_kills(
    chaos_dsn: str,
    roomy_nats: NatsServer,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    kills: int,
) -> None:
    rng = random.Random(chaos_seed)
    u = unique_name
    with psycopg.connect(chaos_dsn, autocommit=True) as conn:
        # json, not jsonb: json keeps "\ud800" as written, a lone surrogate once parsed
        conn.execute("ALTER TABLE public.outbox ADD COLUMN hdrs json")
    bridge = BridgeRunner(make_bridge, hostile_config(chaos_dsn, roomy_nats.url, u))
    bridge.start()  # creates the slot: rows committed from now on must all arrive
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    hostile = HostileWriter(chaos_dsn)
    load.start()
    hostile.start()
    try:
        for _ in range(kills):
            load.wait_for_rows(rng.randint(0, 600))
            bridge.kill()
            bridge.start(wait_streaming=rng.random() < 0.5)
        bridge.wait_streaming()  # the last start must get going before the audit
        load.wait_for_rows(300)
    finally:
        hostile.stop()
        report = load.stop()
    auditor = Auditor(
        chaos_dsn, roomy_nats.url, u.upper(),
        dead_letters=DeadLetters(f"{u}.dlq", hostile.expected),
    )  # fmt: skip
    result = auditor.audit("hostile rows + bridge kill -9")
    print(report.summary())
    print(f"hostile transactions by kind: {hostile.counts}")
    print(result.summary())
    context = bridge.notable_lines()
    Auditor.assert_clean(result, context)
    assert result.dead_lettered == len(hostile.expected) > 0
    good_rows = report.rows_committed + 2 * sum(hostile.counts.values()) + len(hostile.forged)
    assert result.committed == good_rows

    # Not one header the bridge did not mean, anywhere in the stream.
    messages = auditor.stored_messages()
    strange = [(m.seq, sorted(m.header_names - ALLOWED_HEADERS)) for m in messages
               if not m.header_names <= ALLOWED_HEADERS]  # fmt: skip
    assert not strange, strange[:5]
    by_id = {m.msg_id: m for m in messages}
    for row_id in hostile.forged:  # delivered, with its X-Ok, without the forged names
        kept = by_id[row_id]
        assert "X-Ok" in kept.header_names and not kept.error and kept.lsn != 0, kept
    edges = [by_id[e.msg_id] for e in hostile.expected.values() if "max_payload" in e.reason]
    assert edges and all("Cdc-Body-Dropped" in m.header_names for m in edges)

    # Only the kills ended runs: no hostile row failed a session or stopped the bridge.
    for run in bridge.runs[:-1]:
        assert run.returncode == -9, context
    assert bridge.current.running, context
    events = [r.get("event") for run in bridge.runs for r in run.json_records()]
    assert "session_failed" not in events and "fatal" not in events, context
    assert "reserved_header_dropped" in events
