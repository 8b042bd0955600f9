"""Fault-injection harness: steady outbox load, a bridge that can be killed and restarted,
and an auditor that compares what PostgreSQL committed with what JetStream stored.

The truth is the outbox table. Each generated transaction takes the transaction-level advisory
lock 1 before it draws its number from the ``chaos_txn_no`` sequence, and holds the lock until
its commit record is written; so the numbers increase in commit order, which is the order the
WAL (and so the bridge) must deliver. A message's place in the expected order is therefore
``(payload.txn, payload.idx)``.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psycopg
from nats.aio.msg import Msg
from psycopg.types.json import Jsonb

from cdc_bridge.core.lsn import parse_lsn
from support.bridge import BridgeProcess, log_event, parse_json_line

AGGREGATE_TYPES = ("order", "ticket", "user")

CHAOS_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS chaos_txn_no;
CREATE TABLE IF NOT EXISTS chaos_noise (id bigserial PRIMARY KEY, filler text NOT NULL);
"""

# Not the outbox: a table the publication leaves out, for WAL that carries no events.
NOISE_TABLE = "chaos_noise"
COMMIT_ORDER_LOCK = 1


def install_chaos_schema(dsn: str) -> None:
    """The sequence that numbers transactions, and a table for WAL that is not outbox."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CHAOS_SCHEMA)


# --- load -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What the generator saw. The auditor does not trust it: it reads the table."""

    transactions: int  # committed and acknowledged by the server
    rows: int
    rolled_back: int  # deliberately, to prove rolled-back rows never appear
    uncertain_committed: int  # COMMIT outcome unknown, found committed afterwards
    uncertain_lost: int  # COMMIT outcome unknown, found not committed
    connection_failures: int
    uncertain_rows_committed: int

    @property
    def rows_committed(self) -> int:
        return self.rows + self.uncertain_rows_committed

    def summary(self) -> str:
        return (
            f"load: {self.transactions} txs / {self.rows} rows committed, "
            f"{self.rolled_back} rolled back, uncertain commits {self.uncertain_committed} "
            f"committed / {self.uncertain_lost} not, {self.connection_failures} connection "
            "failures"
        )


class LoadGenerator:
    """Background threads inserting outbox rows, 1-5 per transaction, at a steady rate.

    Survives PostgreSQL going away: failed connections are retried with backoff, and a
    transaction whose COMMIT got no answer is looked up by its row ids after reconnecting.
    """

    def __init__(
        self,
        dsn: str,
        *,
        rows_per_second: float = 300.0,
        max_rows_per_txn: int = 5,
        rollback_ratio: float = 0.05,
        writers: int = 2,
        seed: int | None = None,
    ) -> None:
        self._dsn = dsn
        self._rate_per_writer = rows_per_second / writers
        self._max_rows = max_rows_per_txn
        self._rollback_ratio = rollback_ratio
        self._seed = seed if seed is not None else random.randrange(1 << 30)
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._run_writer, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(writers)
        ]
        self._uncertain: list[list[uuid.UUID]] = []  # guarded by _changed
        self._anomalies: list[str] = []
        self._failure: BaseException | None = None
        self._counts: Counter[str] = Counter()

    @property
    def uncertain_seen(self) -> int:
        """COMMITs that got no answer so far (settled or not yet)."""
        with self._changed:
            return self._counts["uncertain"]

    @property
    def rows_committed(self) -> int:
        with self._changed:
            return self._counts["rows"] + self._counts["uncertain_rows_committed"]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> LoadReport:
        """Stop writing, settle every uncertain commit; what happened."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                raise AssertionError(f"load writer {thread.name} did not stop in {timeout:g}s")
        self._resolve_uncertain_with_retries(timeout)
        self._raise_if_failed()
        if self._anomalies:
            raise AssertionError("load generator anomalies: " + "; ".join(self._anomalies))
        with self._changed:
            c = self._counts
            return LoadReport(
                transactions=c["transactions"],
                rows=c["rows"],
                rolled_back=c["rolled_back"],
                uncertain_committed=c["uncertain_committed"],
                uncertain_lost=c["uncertain_lost"],
                connection_failures=c["connection_failures"],
                uncertain_rows_committed=c["uncertain_rows_committed"],
            )

    def wait_for_rows(self, more_rows: int, timeout: float = 30.0) -> None:
        """Wait until ``more_rows`` more rows are committed than now (load is flowing)."""
        target = self.rows_committed + more_rows
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._counts["rows"] + self._counts["uncertain_rows_committed"] < target:
                self._raise_if_failed()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"load: fewer than {more_rows} rows committed within {timeout:g}s "
                        f"({self._counts['connection_failures']} connection failures)"
                    )
                self._changed.wait(min(remaining, 0.2))

    # -- writer threads --

    def _run_writer(self, writer_no: int) -> None:
        rng = random.Random(self._seed + writer_no)
        conn: psycopg.Connection[Any] | None = None
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                if conn is None:
                    conn = self._connect()
                    if conn is None:
                        return  # stopping
                size = rng.randint(1, self._max_rows)
                next_at = max(next_at + size / self._rate_per_writer, time.monotonic() - 1.0)
                if self._stop.wait(max(0.0, next_at - time.monotonic())):
                    return
                try:
                    self._resolve_uncertain(conn)  # after a reconnect: what did we lose?
                    self._one_transaction(conn, rng, size, writer_no)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    self._count("connection_failures")
                    conn.close()
                    conn = None
                except psycopg.errors.QueryCanceled:
                    conn.rollback()  # statement_timeout: a stuck lock wait, try again
        except BaseException as exc:  # recorded and re-raised by stop() in the test thread
            with self._changed:
                self._failure = exc
                self._changed.notify_all()
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> psycopg.Connection[Any] | None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                return psycopg.connect(
                    self._dsn, connect_timeout=2, options="-c statement_timeout=10000"
                )
            except psycopg.OperationalError:
                self._stop.wait(delay)
                delay = min(delay * 2, 0.5)
        return None

    def _one_transaction(
        self, conn: psycopg.Connection[Any], rng: random.Random, size: int, writer_no: int
    ) -> None:
        ids = [uuid.uuid4() for _ in range(size)]
        row = conn.execute(
            "SELECT nextval('chaos_txn_no') FROM (SELECT pg_advisory_xact_lock(%s)) AS held",
            (COMMIT_ORDER_LOCK,),
        ).fetchone()
        assert row is not None
        txn_no = int(row[0])
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload)"
                " VALUES (%s, %s, %s, 'created', %s)",
                [
                    (
                        row_id,
                        AGGREGATE_TYPES[(txn_no + idx) % len(AGGREGATE_TYPES)],
                        str(txn_no),
                        Jsonb({"txn": txn_no, "idx": idx, "writer": writer_no}),
                    )
                    for idx, row_id in enumerate(ids)
                ],
            )
        if rng.random() < self._rollback_ratio:
            conn.rollback()
            self._count("rolled_back")
            return
        try:
            conn.commit()
        except (psycopg.OperationalError, psycopg.InterfaceError):
            with self._changed:
                self._uncertain.append(ids)
                self._counts["uncertain"] += 1
            raise
        self._count("transactions")
        self._count("rows", size)

    def _resolve_uncertain(self, conn: psycopg.Connection[Any]) -> None:
        """Look up transactions whose COMMIT got no answer: all rows exist or none do."""
        with self._changed:
            pending, self._uncertain = self._uncertain, []
        if not pending:
            return
        try:
            # Each of those transactions held the lock from its start to its end: once we
            # hold it, none is still committing (a backend may outlive its cut connection)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (COMMIT_ORDER_LOCK,))
            for ids in pending:
                row = conn.execute(
                    "SELECT count(*) FROM public.outbox WHERE id = ANY(%s)", (ids,)
                ).fetchone()
                found = int(row[0]) if row else 0
                if found == len(ids):
                    self._count("uncertain_committed")
                    self._count("uncertain_rows_committed", found)
                elif found == 0:
                    self._count("uncertain_lost")
                else:
                    with self._changed:
                        self._anomalies.append(f"{found} of {len(ids)} rows of one tx committed")
                ids.clear()
            conn.commit()
        except BaseException:
            with self._changed:  # keep what was not settled for the next try
                self._uncertain.extend(ids for ids in pending if ids)
            raise

    def _resolve_uncertain_with_retries(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                if not self._uncertain:
                    return
            try:
                with psycopg.connect(self._dsn, connect_timeout=2) as conn:
                    self._resolve_uncertain(conn)
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the server is still starting after a restart

    def _count(self, key: str, amount: int = 1) -> None:
        with self._changed:
            self._counts[key] += amount
            self._changed.notify_all()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise AssertionError(f"load generator failed: {self._failure!r}") from self._failure


def insert_one_big_transaction(dsn: str, rows: int) -> int:
    """One transaction of ``rows`` outbox rows (idx 0..rows-1); its txn number."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT nextval('chaos_txn_no') FROM (SELECT pg_advisory_xact_lock(%s)) AS held",
            (COMMIT_ORDER_LOCK,),
        ).fetchone()
        assert row is not None
        txn_no = int(row[0])
        conn.execute(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload)"
            " SELECT 'bulk', %(txn)s::text, 'created',"
            "        jsonb_build_object('txn', %(txn)s::bigint, 'idx', g)"
            " FROM generate_series(0, %(last)s) AS g",
            {"txn": txn_no, "last": rows - 1},
        )
    return txn_no


def write_noise(dsn: str, megabytes: float, *, chunk_kib: int = 256) -> None:
    """Write roughly ``megabytes`` of WAL to a table that is not in the publication."""
    filler = "x" * 1000
    rows_per_chunk = chunk_kib
    chunks = int(megabytes * 1024 / chunk_kib) + 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(chunks):
            conn.execute(
                f"INSERT INTO {NOISE_TABLE} (filler) SELECT %s FROM generate_series(1, %s)",
                (filler, rows_per_chunk),
            )


# --- PostgreSQL positions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotState:
    confirmed_flush_lsn: int
    active: bool
    wal_status: str | None
    behind_bytes: int  # pg_current_wal_lsn() - confirmed_flush_lsn


def slot_state(dsn: str, slot: str) -> SlotState | None:
    with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text, active, wal_status,"
            "       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    if row is None:
        return None
    return SlotState(parse_lsn(row[0]), bool(row[1]), row[2], int(row[3]))


# --- reading the stream ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    msg_id: str
    lsn: int  # the transaction's commit LSN, from the bridge's Cdc-Lsn header (0 if absent)
    stored_at: float = field(default=0.0, compare=False)  # when stored (epoch seconds)
    subject: str = field(default="", compare=False)
    header_names: frozenset[str] = field(default=frozenset(), compare=False)
    error: str = field(default="", compare=False)  # Cdc-Error: a dead letter's reason
    replayed: bool = field(default=False, compare=False)  # Cdc-Replay: true (outbox replay)


async def read_stream(
    url: str, stream: str, timeout: float = 120.0, subjects: str = ">"
) -> list[StoredMessage]:
    """Every message the stream holds now on ``subjects``, in sequence order.

    Through an ordered push consumer with a callback: about five times faster than pull
    fetches or one direct get per message (nats-py makes a task per fetched message), and a
    consumer changes nothing in a limits-retention stream. Messages published after the call
    began are left out, so the result is a consistent snapshot.
    """
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        async with asyncio.timeout(timeout):
            js = nc.jetstream(timeout=10)
            state = (await js.stream_info(stream)).state
            if not state.messages:
                return []
            last_seq = state.last_seq
            if subjects != ">":
                try:
                    last_seq = (await js.get_msg(stream, subject=subjects)).seq or 0
                except nats.js.errors.NotFoundError:
                    return []
            stored: list[StoredMessage] = []
            complete = asyncio.Event()

            async def collect(msg: Msg) -> None:
                seq = msg.metadata.sequence.stream
                if seq > last_seq or complete.is_set():
                    complete.set()
                    return
                headers = msg.headers or {}
                lsn_text = headers.get("Cdc-Lsn")
                stored.append(
                    StoredMessage(
                        seq=seq,
                        msg_id=headers.get("Nats-Msg-Id", ""),
                        lsn=parse_lsn(lsn_text) if lsn_text else 0,
                        stored_at=msg.metadata.timestamp.timestamp(),
                        subject=msg.subject,
                        header_names=frozenset(headers),
                        error=headers.get("Cdc-Error", ""),
                        replayed=headers.get("Cdc-Replay") == "true",
                    )
                )
                if seq == last_seq:
                    complete.set()

            subscription = await js.subscribe(
                subjects,
                stream=stream,
                cb=collect,
                ordered_consumer=True,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
            try:
                await complete.wait()
            finally:
                await subscription.unsubscribe()
            return stored
    finally:
        await nc.close()


async def stream_message_count(url: str, stream: str) -> int:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        info = await nc.jetstream(timeout=5).stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


# --- the auditor ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommittedRow:
    id: str
    txn: int
    idx: int


@dataclass(frozen=True, slots=True)
class AuditResult:
    scenario: str
    committed: int
    stored: int
    lost: int
    duplicated: int
    reordered: int
    extra: int
    examples: tuple[str, ...]
    # Only when the auditor was told of rows that must be dead-lettered (DeadLetters):
    dead_lettered: int = 0  # such rows found once on the dead-letter subject, as expected
    dead_letter_faults: int = 0  # missing, copied, unexpected, misplaced or wrong reason

    @property
    def clean(self) -> bool:
        return not (
            self.lost or self.duplicated or self.reordered or self.extra
            or self.dead_letter_faults
        )  # fmt: skip

    def summary(self) -> str:
        text = (
            f"scenario {self.scenario}: committed {self.committed}, lost {self.lost}, "
            f"duplicated {self.duplicated}, reordered {self.reordered}, extra {self.extra} "
            f"(stream holds {self.stored})"
        )
        if self.dead_lettered or self.dead_letter_faults:
            text += (
                f"; dead-lettered as expected {self.dead_lettered}, dead-letter faults "
                f"{self.dead_letter_faults}"
            )
        return text

    def report(self) -> str:
        return "\n".join([self.summary(), *(f"  {line}" for line in self.examples)])


_EXAMPLES = 8


def compare(
    scenario: str, committed: list[CommittedRow], stored: list[StoredMessage]
) -> AuditResult:
    """Committed rows (in commit order) against the stream's messages (in stream order)."""
    position = {row.id: index for index, row in enumerate(committed)}
    by_id: dict[str, list[StoredMessage]] = {}
    for message in stored:
        by_id.setdefault(message.msg_id, []).append(message)
    examples: list[str] = []

    lost_rows = [row for row in committed if row.id not in by_id]
    if lost_rows:
        txns = sorted({row.txn for row in lost_rows})
        examples.append(
            f"lost {len(lost_rows)} rows of {len(txns)} txs, txn numbers {_ranges(txns)}"
        )
        examples += [f"lost id={r.id} txn={r.txn} idx={r.idx}" for r in lost_rows[:_EXAMPLES]]

    repeated = {msg_id: copies for msg_id, copies in by_id.items() if len(copies) > 1}
    duplicated = sum(len(copies) - 1 for copies in repeated.values())
    if repeated:
        seqs = sorted(copy.seq for copies in repeated.values() for copy in copies[1:])
        examples.append(f"duplicate copies at stream seqs {_ranges(seqs)}")
        for msg_id, copies in list(repeated.items())[:_EXAMPLES]:
            row = committed[position[msg_id]] if msg_id in position else None
            where = f"txn={row.txn} idx={row.idx}" if row else "not committed"
            examples.append(
                f"duplicate id={msg_id} {where} at seqs {[c.seq for c in copies]} "
                f"lsn {[f'{c.lsn:X}' for c in copies]}"
            )

    extra = [m for m in stored if m.msg_id not in position]
    if extra:
        examples.append(f"extra (never committed) at seqs {_ranges([m.seq for m in extra])}")

    reordered = 0
    previous: StoredMessage | None = None
    seen: set[str] = set()
    for message in stored:
        if message.msg_id not in position or message.msg_id in seen:
            continue  # extras and later copies are counted above
        seen.add(message.msg_id)
        if message.replayed:
            continue  # `outbox replay` sends what was missing late, on purpose, and says so
        if previous is not None and position[message.msg_id] < position[previous.msg_id]:
            reordered += 1
            if reordered <= _EXAMPLES:
                now = committed[position[message.msg_id]]
                before = committed[position[previous.msg_id]]
                examples.append(
                    f"reordered: seq {message.seq} (txn {now.txn} idx {now.idx}) after seq "
                    f"{previous.seq} (txn {before.txn} idx {before.idx})"
                )
        previous = message

    return AuditResult(
        scenario=scenario,
        committed=len(committed),
        stored=len(stored),
        lost=len(lost_rows),
        duplicated=duplicated,
        reordered=reordered,
        extra=len(extra),
        examples=tuple(examples),
    )


@dataclass(frozen=True, slots=True)
class ExpectedDeadLetter:
    """What one committed row must become: one message on the dead-letter subject."""

    msg_id: str  # its Nats-Msg-Id: the row's id, or the stand-in for an id that cannot be sent
    reason: str  # a part of its Cdc-Error


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """Rows the auditor must find dead-lettered instead of delivered, by outbox row id.

    Every other row must be a load row (with ``txn``/``idx`` in its payload), delivered on
    its own subject; a row of neither kind in the table is a fault, not a blind spot.
    """

    subject: str
    expected: Mapping[str, ExpectedDeadLetter]


def compare_dead_letters(
    dead_letters: DeadLetters, hostile_row_ids: list[str], stored: list[StoredMessage]
) -> tuple[int, list[str]]:
    """The dead-letter subject's messages against the hostile rows committed: each once,
    with its reason; nothing else there. Returns (how many as expected, the faults)."""
    faults: list[str] = []
    declared = dead_letters.expected
    wanted: dict[str, ExpectedDeadLetter] = {}
    for row_id in hostile_row_ids:
        expected = declared.get(row_id)
        if expected is None:
            faults.append(f"row {row_id} is neither a load row nor declared hostile")
        else:
            wanted[expected.msg_id] = expected
    committed_ids = set(hostile_row_ids)
    faults += [f"declared hostile row {r} is not in the table" for r in declared
               if r not in committed_ids]  # fmt: skip
    found: dict[str, list[StoredMessage]] = {}
    for message in stored:
        found.setdefault(message.msg_id, []).append(message)
    as_expected = 0
    for msg_id, expected in wanted.items():
        copies = found.get(msg_id, [])
        on_subject = [m for m in copies if m.subject == dead_letters.subject]
        if len(copies) != 1 or len(on_subject) != 1:
            faults.append(
                f"dead letter {msg_id!r}: {len(on_subject)} on {dead_letters.subject}, "
                f"{len(copies)} in all, at seqs {[m.seq for m in copies]}"
            )
        elif expected.reason not in on_subject[0].error:
            faults.append(
                f"dead letter {msg_id!r} at seq {on_subject[0].seq}: Cdc-Error "
                f"{on_subject[0].error!r} lacks {expected.reason!r}"
            )
        else:
            as_expected += 1
    unexpected = [m for m in stored if m.subject == dead_letters.subject
                  and m.msg_id not in wanted]  # fmt: skip
    faults += [f"unexpected dead letter {m.msg_id!r} at seq {m.seq}: {m.error!r}"
               for m in unexpected]  # fmt: skip
    return as_expected, faults


def _ranges(numbers: list[int], limit: int = 12) -> str:
    """[1,2,3,7,9,10] -> '1-3, 7, 9-10' (the first ``limit`` runs)."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > limit else "")


class Auditor:
    """Compares the outbox table with the stream once the bridge has caught up."""

    def __init__(
        self,
        dsn: str,
        nats_url: str,
        stream: str,
        subjects: str = ">",
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.dsn = dsn
        self.nats_url = nats_url
        self.stream = stream
        self.subjects = subjects  # one bridge's space, when the stream has several writers
        self.dead_letters = dead_letters

    def committed_rows(self) -> list[CommittedRow]:
        return self._table_rows()[0]

    def _table_rows(self) -> tuple[list[CommittedRow], list[str]]:
        """The load rows in commit order, and the ids of the rows that are not load rows
        (no ``txn`` in the payload: only expected with ``dead_letters``)."""
        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT id::text, (payload->>'txn')::bigint, (payload->>'idx')::int"
                " FROM public.outbox ORDER BY 2, 3"
            ).fetchall()
        load = [CommittedRow(row[0], int(row[1]), int(row[2])) for row in rows
                if row[1] is not None]  # fmt: skip
        return load, [row[0] for row in rows if row[1] is None]

    def stored_messages(self) -> list[StoredMessage]:
        return asyncio.run(read_stream(self.nats_url, self.stream, subjects=self.subjects))

    def audit(self, scenario: str, *, timeout: float = 60.0) -> AuditResult:
        """Wait (up to ``timeout``) until every committed row is in the stream, then compare.

        Returns the comparison as it stands at the deadline if rows are still missing.
        """
        committed, others = self._table_rows()
        deadline = time.monotonic() + timeout
        while True:
            caught_up = asyncio.run(stream_message_count(self.nats_url, self.stream)) >= len(
                committed
            ) + len(others)
            # The count alone can mislead: duplicates may fill it while rows are still missing
            if caught_up or time.monotonic() >= deadline:
                result = self._compare(scenario, committed, others, self.stored_messages())
                if result.lost == 0 or time.monotonic() >= deadline:
                    return result
            time.sleep(0.25)

    def _compare(
        self,
        scenario: str,
        committed: list[CommittedRow],
        others: list[str],
        stored: list[StoredMessage],
    ) -> AuditResult:
        dead_letters = self.dead_letters
        if dead_letters is None:
            if others:
                raise AssertionError(f"outbox rows without a txn number: {others[:5]}")
            return compare(scenario, committed, stored)
        # The dead-letter subject is audited on its own; everything else as always (a
        # load row that was dead-lettered shows there as unexpected, and here as lost).
        result = compare(
            scenario, committed, [m for m in stored if m.subject != dead_letters.subject]
        )
        as_expected, faults = compare_dead_letters(dead_letters, others, stored)
        return replace(
            result,
            stored=len(stored),
            dead_lettered=as_expected,
            dead_letter_faults=len(faults),
            examples=(*result.examples, *faults[:_EXAMPLES]),
        )

    @staticmethod
    def assert_clean(result: AuditResult, context: str = "") -> None:
        if not result.clean:
            raise AssertionError(result.report() + (f"\n{context}" if context else ""))


# --- the bridge -----------------------------------------------------------------------------


# How the bridge publishes: atomic batches (nats.atomic_transactions), message by message
# pipelined, or message by message in fast-ingest batches (nats.fast_ingest).
PUBLISH_MODES = ("atomic", "per-message", "fast")


def chaos_bridge_config(
    *,
    dsn: str,
    nats_url: str,
    name: str,
    status_interval: str = "200ms",
    ack_timeout: str = "2s",
    duplicate_window: str = "30s",
    max_in_flight: int = 4096,
    replicas: int = 1,
    extra_servers: tuple[str, ...] = (),
    atomic: bool | None = None,
    fast: bool = False,
) -> dict[str, Any]:
    """Bridge config for slot/publication ``name`` and stream ``NAME`` on ``name.>``.

    ``atomic``: ``nats.atomic_transactions``; None: from CHAOS_PUBLISH_MODE (``atomic``,
    ``per-message`` or ``fast``: per-message through fast-ingest batches), else the
    default (atomic with the test's nats-server 2.15), so
    ``CHAOS_PUBLISH_MODE=fast pytest tests/chaos`` runs every scenario in that mode.
    ``fast``: ``nats.fast_ingest`` when ``atomic`` is given."""
    if atomic is None:
        mode = os.environ.get("CHAOS_PUBLISH_MODE", "atomic")
        if mode not in PUBLISH_MODES:
            raise ValueError(f"CHAOS_PUBLISH_MODE={mode!r}: expected one of {PUBLISH_MODES}")
        atomic, fast = mode == "atomic", mode == "fast"
    return {
        "postgres": {
            "dsn": dsn,
            "slot": name,
            "publication": name,
            "status_interval": status_interval,
            "connect_timeout": "2s",
        },
        "nats": {
            "servers": [nats_url, *extra_servers],
            "stream": {
                "name": name.upper(),
                "subjects": [f"{name}.>"],
                "duplicate_window": duplicate_window,
                "replicas": replicas,
            },
            "ack_timeout": ack_timeout,
            "max_in_flight": max_in_flight,
            "connect_timeout": "2s",
            "atomic_transactions": atomic,
            "fast_ingest": fast,
        },
        "outbox": {"table": "public.outbox"},
        "routes": [{"subject": name + ".{aggregate_type}.{event_type}"}],
        "logging": {"format": "json", "level": "info"},
        "shutdown_timeout": "5s",
    }


NOTABLE_EVENTS = frozenset(
    {"streaming", "session_failed", "recovered", "slot_created", "fatal", "stopped",
     "shutdown_acks_missing", "dead_lettered"}
)


class BridgeRunner:
    """One bridge config run again and again: every process is kept for its log."""

    def __init__(
        self, make_bridge: Callable[..., BridgeProcess], config: Mapping[str, Any]
    ) -> None:
        self._make_bridge = make_bridge
        self.config = config
        self.runs: list[BridgeProcess] = []

    @property
    def current(self) -> BridgeProcess:
        if not self.runs:
            raise RuntimeError("the bridge was never started")
        return self.runs[-1]

    def start(self, *, wait_streaming: bool = True, timeout: float = 30.0) -> BridgeProcess:
        bridge = self._make_bridge(self.config)
        self.runs.append(bridge)
        if wait_streaming:
            self.wait_streaming(timeout=timeout)
        return bridge

    def wait_streaming(self, *, since: int = 0, timeout: float = 30.0) -> None:
        self.current.wait_for_log(log_event("streaming"), timeout=timeout, since=since)

    def kill(self) -> None:
        self.current.kill()

    def terminate(self) -> int:
        return self.current.terminate()

    def peak_rss_kib(self) -> int:
        """VmHWM of the running bridge: the most resident memory it ever had."""
        status = Path(f"/proc/{self.current.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    def notable_lines(self, limit: int = 60, tail: int = 15) -> str:
        """Warnings, errors and session events of every run, then the last lines of the
        current run whatever they are, for a failure report."""
        picked: list[str] = []
        for number, bridge in enumerate(self.runs):
            picked.append(f"--- run {number} (exit code {bridge.returncode})")
            for line in bridge.lines:
                record = parse_json_line(line)
                if record is None:
                    picked.append(line)  # tracebacks
                elif record.get("event") in NOTABLE_EVENTS or record.get("level") in (
                    "warning", "error", "critical"
                ):
                    picked.append(line)
        last = self.runs[-1].lines[-tail:] if self.runs else []
        return "\n".join([*picked[-limit:], f"--- last {len(last)} lines of the last run", *last])
