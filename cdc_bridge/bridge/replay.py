"""Publishing retained outbox rows again: what `cdc-bridge outbox replay` does.

Each row goes through the bridge's own router (subject, headers, id, dead letters),
gets the bridge's headers (Nats-Msg-Id, Cdc-Table, Cdc-Source) and ``Cdc-Replay:
true``, but no Cdc-Lsn / Cdc-Index: a row read from the table has no known commit
position, and a made-up one would mislead the bridge's reading of its stream tail
(sink/reconcile.py skips replays). Messages are published one at a time, each ack
awaited: a replay is a repair, and one in flight at a time can never reorder or leave
a gap behind a later message.

Which rows: those the audit found missing (bridge/audit.py), so a row the stream
already holds is never published again, whatever the duplicate window. The caller
holds the slot's leadership lock meanwhile, so no bridge writes into the stream (and
its order guard's expectations) while this does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.client import JetStreamContext

from cdc_bridge.core.headers import (
    BRIDGE_HEADERS,
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE,
    REPLAY_HEADER,
    TX_LAST_HEADER,
)
from cdc_bridge.core.subjects import subject_matches
from cdc_bridge.routing.router import Outbound, Poison, Router
from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.outbox_rows import Window, rows_in_commit_order
from cdc_bridge.source.tables import table_columns

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

Key = tuple[str, str]  # (id, table)
LISTED = 1_000
# A replayed row's transaction is not known: no route may claim it was the last of one.
_OWN_HEADERS = frozenset(
    (*BRIDGE_HEADERS, TX_LAST_HEADER, EXPECTED_LAST_SEQUENCE, EXPECTED_LAST_MSG_ID)
)


class ReplayRefused(Exception):
    """A row that cannot be published and has nowhere else to go (no dead_letter)."""


@dataclass
class ReplayResult:
    published: int = 0  # stored by JetStream (dead letters included)
    dead_lettered: int = 0
    # JetStream answered "duplicate": not stored. The audit found no message with the id,
    # so the duplicate window still remembers a message deleted since.
    dedup_refused: int = 0
    other_stream: int = 0  # routed to a subject the bridge's stream does not capture
    planned: int = 0  # rows that would be (or were) published
    ids: list[str] = field(default_factory=list)  # the first LISTED, in publish order


def replay_headers(outcome: Outbound, table: str, source: str) -> dict[str, str]:
    headers = {k: v for k, v in outcome.headers.items() if k not in _OWN_HEADERS}
    headers["Nats-Msg-Id"] = outcome.msg_id
    headers["Cdc-Table"] = table
    headers["Cdc-Source"] = source
    headers[REPLAY_HEADER] = "true"
    return headers


async def replay_rows(
    js: JetStreamContext,
    conn: AsyncConn,
    config: BridgeConfig,
    router: Router,
    wanted: set[Key],
    *,
    source: str,
    stream_subjects: Sequence[str],
    window: Window,
    by_commit_timestamp: bool,
    publish: bool,
    only_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Publish (or, ``publish=False``, list) the ``wanted`` rows in commit order."""
    result = ReplayResult()
    id_column = config.outbox.id_column
    for table in config.outbox.tables:
        columns = await table_columns(conn, table) or []
        async for batch in rows_in_commit_order(
            conn,
            table,
            id_column,
            columns,
            window,
            by_commit_timestamp=by_commit_timestamp,
            only_ids=only_ids,
        ):
            for row in batch:
                row_id = row.get(id_column)
                if row_id is None or (row_id, table) not in wanted:
                    continue
                await _one(js, router, row, row_id, table, source, stream_subjects, publish, result)
                if progress is not None:
                    progress(result.planned)
    return result


async def _one(
    js: JetStreamContext,
    router: Router,
    row: dict[str, str | None],
    row_id: str,
    table: str,
    source: str,
    stream_subjects: Sequence[str],
    publish: bool,
    result: ReplayResult,
) -> None:
    outcome = router.route(table, row)
    if type(outcome) is Poison:
        raise ReplayRefused(
            f"row id={row_id} of {table}: {outcome.reason}; no dead_letter is configured, "
            "so replay stops here (the rows before it are published)"
        )
    assert type(outcome) is Outbound
    if not any(subject_matches(p, outcome.subject) for p in stream_subjects):
        result.other_stream += 1  # its stream was not audited: leave it alone
        return
    result.planned += 1
    if len(result.ids) < LISTED:
        result.ids.append(row_id)
    if not publish:
        return
    try:
        ack = await js.publish(
            outcome.subject, outcome.data, headers=replay_headers(outcome, table, source)
        )
    except nats.js.errors.NoStreamResponseError:
        dead = router.dead_letter(outcome, f"no stream captures subject {outcome.subject}", row_id)
        if type(dead) is Poison:
            raise ReplayRefused(f"row id={row_id} of {table}: {dead.reason}") from None
        assert type(dead) is Outbound
        ack = await js.publish(dead.subject, dead.data, headers=replay_headers(dead, table, source))
        result.dead_lettered += 1
    if ack.duplicate:
        result.dedup_refused += 1
        return
    result.published += 1
    if outcome.dead_letter_reason is not None:
        result.dead_lettered += 1
