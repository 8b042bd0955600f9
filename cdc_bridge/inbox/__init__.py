"""Consuming the bridge's events into a PostgreSQL database: each once, each transaction whole.

The consumer-side counterpart of ``cdc_bridge.outbox``::

    async def handle(conn: psycopg.AsyncConnection, events: Sequence[Event]) -> None:
        for event in events:  # one source transaction, in stream order
            ticket = json.loads(event.data)
            await conn.execute("INSERT INTO tickets ... ON CONFLICT ...", (...))

    await create_inbox_tables(conn)  # sql/inbox.sql, once
    inbox = Inbox(nc, dsn, stream="TICKETS", durable="tickets-copy", handler=handle)
    await inbox.run(stop)  # until stop is set

- **Once.** Each message's ``Nats-Msg-Id`` is recorded (table ``cdc_inbox``, with the
  consumer's name) in the same transaction as the handler's writes; messages are acked
  only after the commit. A message recorded before (redelivered, or published again) is
  acked and not handed over.
- **Whole transactions.** By default the handler gets one source transaction at a time
  (grouped by ``Cdc-Lsn``, ending at ``Cdc-Tx-Last`` or the next ``Cdc-Lsn``), in one
  consumer transaction. A transaction with more events than ``max_in_flight`` (for this
  consumer's subjects) is applied in consecutive parts of ``max_in_flight`` events, each
  whole, in order: JetStream sends no more than that many unacknowledged messages.
  ``whole_transactions=False`` hands events over one at a time.
- **Order.** Events are applied in stream order. One process applies for a consumer at a
  time (a PostgreSQL advisory lock); another one with the same name waits as a standby.
  The position is kept in the database (``cdc_inbox_position``) and the durable consumer
  is created again from it on start.
- **Failures.** A handler exception rolls the transaction back; the group is tried again
  after ``backoff`` (in this process, holding the later events back, so order holds).
  After ``max_attempts`` it is parked (``cdc_inbox_parked``, with the error), its messages
  terminated, an error logged, and the next transactions are applied. Attempts are
  counted by the running process: a restart counts them from one again. A lost
  PostgreSQL connection is connected again (growing pauses, a warning each time), the
  lock taken again, and reading goes on from the position: nothing is applied twice
  (a first connect that fails raises).
- **Housekeeping.** ``prune_inbox(conn, nc, stream=, consumer=)`` (or ``cdc-bridge inbox
  prune``) deletes the ids that no copy can reach any more: recorded longer ago than the
  stream's ``duplicate_window`` and at or below the consumer's position.

This package needs psycopg and nats-py only: nothing of the daemon (its config, logging,
metrics) is imported. Logs go to the standard ``logging`` logger ``cdc_bridge.inbox``.
"""

from __future__ import annotations

from cdc_bridge.inbox._consumer import AfterCommit, Handler, Inbox
from cdc_bridge.inbox._events import Event, Grouper, event_of
from cdc_bridge.inbox._prune import PruneResult, prune_inbox
from cdc_bridge.inbox._tables import (
    create_inbox_tables,
    create_inbox_tables_sync,
    inbox_sql,
)

__all__ = [
    "AfterCommit",
    "Event",
    "Grouper",
    "Handler",
    "Inbox",
    "PruneResult",
    "create_inbox_tables",
    "create_inbox_tables_sync",
    "event_of",
    "inbox_sql",
    "prune_inbox",
]
