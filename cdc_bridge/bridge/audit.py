"""Does the stream hold every retained outbox row exactly once, in commit order?

Both sides are compared by (id, table) in sorted order, so neither is ever held whole:

- the stream is read once, headers only, in batches (sink/stream_read.py). Each of this
  bridge's messages leaves (id, table, sequence) in a buffer of ``CHUNK`` entries that
  is sorted and written to a temporary file when full; the files are then merged
  (``heapq.merge``), one line of each in memory at a time. Memory is one chunk, the
  stream may be any length (10 million messages: 100 files of ~5 MB on disk);
- the rows come sorted by the same key from a server-side cursor (source/outbox_rows.py).

A merge walk then sees each key once with all the sequences that hold it: a row without
messages is missing, a key with two or more is duplicated, messages without a row in the
window are looked up by id (batched, on a second connection that sees rows committed
since the snapshot): a row outside the window is not this audit's business, no row at
all means it was deleted ("unretained": expected after `outbox prune`).

When the stream's own limits (max_age, max_msgs, max_bytes, per subject; discard: old)
have removed its oldest messages, the rows of those messages are expected to be missing,
and every other row must still be checked. The stream holds this bridge's messages in
commit order, so the cut is the row of the first of them it still holds: rows created
before that row (``Window.retained_from``) that have no message are counted apart
("outside_retention"), rows created since are checked as usual, and every message still
held is checked for copies and order. Rows come with their insert time (created_at, the
transaction's start), not their commit position: a transaction that ran across the cut
can land on the wrong side of it. A cut by the time the first message was stored left
out every row created before it, which after a backlog was every row the stream held.

Commit order is checked while reading: the bridge's messages carry their commit position
(Cdc-Lsn, Cdc-Index) and, stored in order, those never go down. A message below the
highest position before it is out of order, unless it is a second copy of an id (then it
is counted as duplicated only). Replays (Cdc-Replay) and dead letters (sent late on
purpose) are not order-checked.

An alternative was a set of the ids seen: simpler, but ~100 bytes per id in CPython
(1 GB for 10 million), the memory this command must not need.
"""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO

from nats.js.client import JetStreamContext

from cdc_bridge.core.headers import REPLAY_HEADER
from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.sink.stream_read import Progress, limits_removed_before, read_headers
from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.outbox_rows import Window, created_times, existing_ids, ids_in_order

CHUNK = 100_000  # stream entries sorted in memory before they go to a file
LISTED = 1_000  # ids listed per count (missing_ids...)
LOOKUP_BATCH = 1_000
# Messages are stored after their row was created; start reading a window's messages a
# little earlier than its start all the same, for clocks that disagree between hosts.
CLOCK_SLACK = timedelta(minutes=5)
_MAX_ORDER_CANDIDATES = 100_000
# The first messages held, in stream order, looked up for the cut: the first whose row
# is still there gives it (the very first one's may have been pruned).
CUT_CANDIDATES = 100

Key = tuple[str, str]  # (Nats-Msg-Id, Cdc-Table)
Row = tuple[str, str, bool]  # (id, table, created before the stream's retention)


@dataclass
class AuditResult:
    stream: str
    source: str
    window: Window
    rows: int = 0  # retained rows in the window, compared (outside_retention not among them)
    messages: int = 0  # stream messages read
    ours: int = 0  # of them, this bridge's outbox messages
    missing: int = 0  # rows no message holds
    duplicated: int = 0  # ids stored more than once
    extra_copies: int = 0  # messages beyond the first of those ids
    out_of_order: int = 0
    order_checked: int = 0  # messages whose commit position was compared
    unretained: int = 0  # messages whose row is no longer in the table
    outside_window: int = 0  # messages whose row exists, created outside the window
    # Rows without a message created before the row of the stream's first held message:
    # the stream's limits removed their messages (expected, not a failure).
    outside_retention: int = 0
    replayed: int = 0  # messages marked Cdc-Replay
    # The stream's limits removed messages: the created_at of the row of the first one it
    # still holds (the cut of outside_retention).
    stream_expired_before: datetime | None = None
    missing_ids: list[str] = field(default_factory=list)
    duplicated_ids: list[str] = field(default_factory=list)
    out_of_order_ids: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.missing == 0 and self.duplicated == 0


class _SortedSpill:
    """(id, table, seq) entries in, sorted by (id, table) back out, bounded memory."""

    def __init__(self, directory: str, chunk: int = CHUNK) -> None:
        self._directory = directory
        self._chunk = chunk
        self._buffer: list[tuple[str, str, int]] = []
        self._files: list[str] = []

    def add(self, msg_id: str, table: str, seq: int) -> None:
        self._buffer.append((msg_id, table, seq))
        if len(self._buffer) >= self._chunk:
            self._spill()

    def _spill(self) -> None:
        self._buffer.sort()
        path = os.path.join(self._directory, f"chunk{len(self._files)}")
        with open(path, "w", encoding="utf-8") as out:
            # NUL and LF cannot occur in header values: safe separators.
            out.writelines(f"{i}\0{t}\0{s}\n" for i, t, s in self._buffer)
        self._files.append(path)
        self._buffer = []

    def groups(self) -> Iterator[tuple[Key, list[int]]]:
        """Each key once, with the sequences of every message holding it."""
        self._buffer.sort()
        handles: list[IO[str]] = [open(p, encoding="utf-8") for p in self._files]  # noqa: SIM115
        try:
            sources: list[Iterator[tuple[str, str, int]]] = [_entries(h) for h in handles]
            merged = heapq.merge(*sources, iter(self._buffer))
            for key, entries in itertools.groupby(merged, key=lambda e: (e[0], e[1])):
                yield key, [entry[2] for entry in entries]
        finally:
            for handle in handles:
                handle.close()


def _entries(handle: IO[str]) -> Iterator[tuple[str, str, int]]:
    for line in handle:
        msg_id, table, seq = line[:-1].split("\0")
        yield msg_id, table, int(seq)


class _OrderCheck:
    """Positions never go down in a stream written in commit order."""

    def __init__(self) -> None:
        self.highest: tuple[int, int] | None = None
        self.checked = 0
        self.candidates: dict[Key, int] = {}  # key -> seq of a message below the highest
        self.overflow = 0  # candidates past the bound: counted, not told apart

    def see(self, key: Key, seq: int, headers: dict[str, str]) -> bool:
        """False for a message not in commit order by design (a replay, a dead letter)."""
        lsn = headers.get("Cdc-Lsn")
        if lsn is None or REPLAY_HEADER in headers or "Cdc-Error" in headers:
            return False
        try:
            position = (parse_lsn(lsn), int(headers.get("Cdc-Index", "0")))
        except ValueError:
            return False
        self.checked += 1
        if self.highest is None or position >= self.highest:
            self.highest = position
        elif len(self.candidates) < _MAX_ORDER_CANDIDATES:
            self.candidates.setdefault(key, seq)
        else:
            self.overflow += 1
        return True


class _Lookups:
    """Messages without a row in the window, asked about in batches: is the row there?"""

    def __init__(self, conn: AsyncConn | None, id_column: str, result: AuditResult) -> None:
        self._conn = conn
        self._id_column = id_column
        self._result = result
        self._pending: dict[str, list[str]] = {}

    async def add(self, key: Key) -> None:
        ids = self._pending.setdefault(key[1], [])
        ids.append(key[0])
        if len(ids) >= LOOKUP_BATCH:
            await self._ask(key[1])

    async def flush(self) -> None:
        for table in list(self._pending):
            await self._ask(table)

    async def _ask(self, table: str) -> None:
        ids = self._pending.pop(table, [])
        if self._conn is None:  # not asked for (replay): all counted as unretained
            self._result.unretained += len(ids)
            return
        found = await existing_ids(self._conn, table, self._id_column, ids)
        self._result.outside_window += len(found)
        self._result.unretained += len(ids) - len(found)


async def audit_outbox(
    js: JetStreamContext,
    stream: str,
    source: str,
    snapshot: AsyncConn,
    lookup_conn: AsyncConn,
    *,
    tables: tuple[str, ...],
    id_column: str,
    window: Window,
    progress: Progress | None = None,
    chunk: int = CHUNK,
) -> AuditResult:
    """``audit_stream`` over the outbox ``tables`` as ``snapshot`` sees them (its
    transaction began before the stream is read): the command's and the daemon's audit."""
    return await audit_stream(
        js,
        stream,
        source,
        lambda chosen: ids_in_order(snapshot, tables, id_column, chosen),
        lookup_conn,
        tables=frozenset(tables),
        id_column=id_column,
        window=window,
        created_at=lambda keys: created_times(snapshot, id_column, keys),
        progress=progress,
        chunk=chunk,
    )


async def audit_stream(
    js: JetStreamContext,
    stream: str,
    source: str,
    rows: Callable[[Window], AsyncIterator[list[Row]]],
    lookup_conn: AsyncConn | None,
    *,
    tables: frozenset[str],
    id_column: str,
    window: Window,
    created_at: Callable[[list[Key]], Awaitable[dict[Key, datetime]]],
    progress: Progress | None = None,
    on_missing: Callable[[str, str], None] | None = None,
    chunk: int = CHUNK,
) -> AuditResult:
    """Compare what ``rows(window)`` yields (sorted (id, table, early) batches) with
    ``stream``. ``created_at`` gives the insert time of rows (source/outbox_rows.py's
    created_times): for the cut, when the stream's limits have removed messages.
    ``chunk``: entries sorted at once, the longest step that does not wait on I/O (the
    daemon's audit shares the event loop with publishing: bridge/continuous_audit.py)."""
    expired = await limits_removed_before(js, stream)
    if window.start is not None and expired is not None and window.start >= expired:
        expired = None  # the whole window was stored after the limits' last removal
    order = _OrderCheck()
    firsts: list[Key] = []  # this bridge's first messages still held, for the cut
    start = window.start - CLOCK_SLACK if window.start is not None else None
    result = AuditResult(stream=stream, source=source, window=window)
    with tempfile.TemporaryDirectory(prefix="cdc-bridge-audit-") as directory:
        spill = _SortedSpill(directory, chunk)
        async for batch in read_headers(js, stream, start_time=start, progress=progress):
            result.messages += len(batch)
            for seq, headers in batch:
                if headers.get("Cdc-Source") != source:
                    continue
                table = headers.get("Cdc-Table")
                msg_id = headers.get("Nats-Msg-Id")
                if table not in tables or msg_id is None:
                    continue  # a change event or logical message: no row to compare with
                result.ours += 1
                if REPLAY_HEADER in headers:
                    result.replayed += 1
                spill.add(msg_id, table, seq)
                in_order = order.see((msg_id, table), seq, headers)
                if in_order and expired is not None and len(firsts) < CUT_CANDIDATES:
                    firsts.append((msg_id, table))
        if expired is not None:
            window = Window(window.start, window.end, await _cut(firsts, created_at, expired))
        result.window = window
        result.stream_expired_before = window.retained_from
        await _merge(
            spill.groups(),
            rows(window),
            order,
            _Lookups(lookup_conn, id_column, result),
            result,
            on_missing,
        )
    return result


async def _cut(
    firsts: list[Key],
    created_at: Callable[[list[Key]], Awaitable[dict[Key, datetime]]],
    first_stored: datetime,
) -> datetime:
    """Where the stream's retention starts among the rows: the created_at of the row of
    the first message of ours it holds; without one (none held, or every row pruned), the
    time its first message was stored, as no later row can have been removed."""
    found = await created_at(firsts)
    for key in firsts:
        if key in found:
            return found[key]
    return first_stored


async def _merge(
    groups: Iterator[tuple[Key, list[int]]],
    rows: AsyncIterator[list[Row]],
    order: _OrderCheck,
    lookups: _Lookups,
    result: AuditResult,
    on_missing: Callable[[str, str], None] | None,
) -> None:
    out_of_order = dict(order.candidates)

    def stored(key: Key, seqs: list[int]) -> None:
        if len(seqs) > 1:
            result.duplicated += 1
            result.extra_copies += len(seqs) - 1
            if len(result.duplicated_ids) < LISTED:
                result.duplicated_ids.append(key[0])
            seq = out_of_order.get(key)
            if seq is not None and seq != min(seqs):
                del out_of_order[key]  # a second copy, not a reordering

    current = next(groups, None)
    previous: Key | None = None
    async for batch in rows:
        for row_id, table, early in batch:
            key = (row_id, table)
            if key == previous:
                continue  # a table without a unique id: its rows share one message
            previous = key
            while current is not None and current[0] < key:
                stored(*current)
                await lookups.add(current[0])
                current = next(groups, None)
            if current is not None and current[0] == key:
                result.rows += 1
                stored(*current)
                current = next(groups, None)
                continue
            if early:  # its message was among those the stream's limits removed
                result.outside_retention += 1
                continue
            result.rows += 1
            result.missing += 1
            if len(result.missing_ids) < LISTED:
                result.missing_ids.append(key[0])
            if on_missing is not None:
                on_missing(*key)
    while current is not None:
        stored(*current)
        await lookups.add(current[0])
        current = next(groups, None)
    await lookups.flush()
    result.order_checked = order.checked
    result.out_of_order = len(out_of_order) + order.overflow
    result.out_of_order_ids = sorted(key[0] for key in out_of_order)[:LISTED]
