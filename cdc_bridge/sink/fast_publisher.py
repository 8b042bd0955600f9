"""Per-message mode through fast-ingest batches (nats-server 2.14+, ``allow_batched``).

A fast batch is stored message by message, in order and gap-free (gap mode ``fail``:
the server ends the batch at the first message it misses or refuses), and other
writers' messages may come in between (fast_batches.py has the wire format). It is
not atomic, so it serves per-message mode; what it saves is the ack per message: one
flow ack every few hundred messages and one for the commit. Measured with one raw
publisher on nats-server 2.15.1: 52.2k msgs/s against 35.3k pipelined one by one, and
46.4k beside another writer, where the pipelined publisher's chain must go one message
per ack round trip (ordering.py).

This is AtomicPublisher's shape with another batch underneath: batches form while the
previous one is in flight, one is in flight at a time, and a batch starts only once the
previous one's commit is acked, so the bridge's messages in its subject space stay a
gap-free prefix of what it sent, in commit order (what reconcile.py's position-based
skipping of replays needs). The order guard's subject-scoped expectation goes on each
batch's first message only (``Nats-Expected-Last-Msg-Id`` never: a fast batch answers
its failure like an ack and goes on); the batch is ordered and gap-free after it.

Acks: a flow ack settles every message up to its batch sequence (the tracker may
confirm transactions it completes); the commit ack settles the rest. Duplicates are
skipped silently (their ``Nats-Msg-Id`` is stored already): as good as stored. A
message the server refuses ends the batch there: the stored prefix is settled, and a
refusal that would come on every replay (acks.PERMANENT) sends the rest one message at
a time, as atomic mode does, so the bad one is dead-lettered; anything else fails the
session, which starts over from the slot. A batch of one message goes out as a plain
publish with the order guard (AtomicPublisher's path).
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg

from cdc_bridge.sink.acks import AckKind, classify
from cdc_bridge.sink.atomic_publisher import AtomicPublisher
from cdc_bridge.sink.batches import Batch, BatchForming
from cdc_bridge.sink.fast_batches import (
    OP_APPEND,
    OP_COMMIT,
    OP_COMMIT_EOB,
    OP_START,
    SUFFIX,
    FastForming,
    Reply,
    batch_id_of,
    parse_reply,
    reply_prefix,
)
from cdc_bridge.sink.publisher import PublishError, limit_error
from cdc_bridge.sink.wire import BLOCK_START

_BLOCK_OVERHEAD = len(BLOCK_START) + 2  # the first line, and the blank line that ends it
_CRLF = b"\r\n"


class FastPublisher(AtomicPublisher):
    """The pipeline's publisher in per-message mode with fast-ingest batches (made as
    AtomicPublisher is)."""

    _fast_id: str | None = None  # the id of the fast batch in flight
    _flow_settled: int = 0  # its messages settled by flow acks
    _ended: Reply | None = None  # the gap or refusal that ended it early

    def _new_forming(self, max_messages: int) -> BatchForming:
        """A fast batch need not hold whole transactions: FastForming."""
        return FastForming(max_messages)

    async def start(self) -> None:
        # Fast replies come on <inbox>.<batch id>.<flow>.<gap>.<seq>.<op>.$FI.
        await self._nc.subscribe(self._inbox + ".>", cb=self._on_ack)
        await self._outside.start()
        self._watchdog = asyncio.create_task(self._watch_ack_timeout())

    @property
    def in_flight(self) -> int:
        sending = self._sending
        unacked = len(sending.inside) - self._flow_settled if sending else 0
        return unacked + self._outside.in_flight

    def _singly(self, batch: Batch) -> bool:
        """Never: a fast batch is not staged, so a small one costs no more than singles."""
        return False

    def _queue(self, batch: Batch) -> None:
        """The frames of ``batch``: one fast batch, or (a batch of one, or one sent one
        message at a time) the plain publish of its first message."""
        messages = batch.inside
        last = len(messages)
        if batch.one_by_one or last == 1:
            self._fast_id = None
            self._flow_settled = 0
            super()._queue(batch)
            return
        self._batches += 1
        batch.token = self._batches  # (watched by the ack timeout: -1 once answered)
        batch.sent_at = time.monotonic()
        batch_id = f"{self._batch_prefix}{self._batches}"
        self._fast_id = batch_id
        self._flow_settled = 0
        self._ended = None
        prefix = reply_prefix(self._inbox, batch_id)
        parts = self._frames.parts
        # The first message: the start operation and the order guard's expectation.
        first = messages[0]
        more = self._guard.expectation(True)
        size = first.lines_size + len(more) + _BLOCK_OVERHEAD
        parts += (
            f"HPUB {first.subject} {prefix}.1.{OP_START}.{SUFFIX} {size} "
            f"{size + len(first.data)}\r\n{BLOCK_START}{first.header_lines}{more}\r\n".encode(),
            first.data,
            _CRLF,
        )
        for seq in range(2, last + 1):
            message = messages[seq - 1]
            op = OP_COMMIT if seq == last else OP_APPEND
            size = message.lines_size + _BLOCK_OVERHEAD
            parts += (
                f"HPUB {message.subject} {prefix}.{seq}.{op}.{SUFFIX} {size} "
                f"{size + len(message.data)}\r\n{BLOCK_START}{message.header_lines}\r\n".encode(),
                message.data,
                _CRLF,
            )

    async def _settle_ack(self, msg: Msg) -> None:
        of = batch_id_of(msg.subject[self._prefix_len :])
        if of is None:  # a plain publish's ack (a batch of one, or one by one)
            if self._fast_id is None:
                await super()._settle_ack(msg)
            return
        batch_id, seq = of
        batch = self._sending
        if batch is None or batch_id != self._fast_id:
            return  # an earlier batch's (answers to messages after its end), ignore
        reply = parse_reply(msg.data)
        kind = reply.kind
        if kind == "flow":
            self._flow_ack(batch, reply.seq)
            return
        if kind == "gap" or kind == "err" or (kind == "refused" and seq > 1):
            if self._ended is None:
                self._ended = reply  # the commit ack follows, with what was stored
                if kind == "refused" and seq == len(batch.inside):
                    await self._end_batch(batch_id, batch, seq)
            return
        self._fast_id = None
        batch.token = -1
        if kind == "done":
            await self._batch_done(batch, reply)
        else:  # the first message refused: nothing of the batch is stored
            await self._batch_ended(batch, reply, 0)
        await self._send_next()  # the next single, or the next batch
        self._progress.set()
        await self._outside.flush()

    async def _end_batch(self, batch_id: str, batch: Batch, seq: int) -> None:
        """The batch's last message was refused before it reached the batch: end the
        batch with an end-of-batch commit in its place (its ack says what was stored)."""
        reply = f"{reply_prefix(self._inbox, batch_id)}.{seq}.{OP_COMMIT_EOB}.{SUFFIX}"
        self._frames.parts.append(f"PUB {batch.inside[-1].subject} {reply} 0\r\n\r\n".encode())
        await self._frames.write()

    def _flow_ack(self, batch: Batch, seq: int) -> None:
        """Everything up to batch sequence ``seq`` is stored (or was a duplicate)."""
        done = self._flow_settled
        if seq > done:
            self._settle(batch.inside[done:seq])
            self._flow_settled = seq
        batch.sent_at = time.monotonic()  # the ack timeout counts from the newest ack

    async def _batch_done(self, batch: Batch, reply: Reply) -> None:
        count = min(reply.count, len(batch.inside))
        settled = self._flow_settled
        if count > settled:
            self._settle(batch.inside[settled:count])
        if reply.seq > 0:  # 0: every message was a duplicate, no sequence to name
            self._guard.stored(reply.seq, count)
        if count == len(batch.inside) and self._ended is None:
            if self._observer is not None:
                self._observer.batch_stored(count)
            self._next_of(batch, count)
            return
        await self._batch_ended(batch, self._ended, count)

    async def _batch_ended(self, batch: Batch, why: Reply | None, stored: int) -> None:
        """The batch ended after ``stored`` messages: because of ``why`` (None: the
        server ended it without saying why)."""
        sent = len(batch.inside)
        first = batch.inside[stored] if stored < sent else batch.inside[-1]
        del batch.inside[:stored]
        self._flow_settled = 0
        if why is None or why.kind == "gap":
            reason = why.error if why is not None else "no reason given"
            self.fail(
                PublishError(
                    f"a fast-ingest batch on {first.subject} ended after {stored} of its "
                    f"{sent} messages: {reason}"
                )
            )
            return
        ack = classify(why.as_pub_ack, None)
        if ack.kind is AckKind.PERMANENT and batch.inside:
            self._split(batch, ack.reason)  # one at a time finds it, and dead-letters it
        elif ack.limit is not None:
            nc, timeout = self._nc, self._ack_timeout
            self.fail(await limit_error(nc, timeout, ack.stream, ack.limit, first.subject))
        else:
            self.fail(
                PublishError(
                    f"JetStream refused a message of a fast-ingest batch on {first.subject} "
                    f"after {stored} of its {sent} messages: {ack.reason}"
                )
            )
