"""What a handler receives, and how messages become source transactions (pure).

A message's transaction is its ``Cdc-Lsn``; the bridge marks the last message it
published of each transaction with ``Cdc-Tx-Last: true``. A consumer that reads only
some subjects may not see that message, so a group also ends when a message with another
``Cdc-Lsn`` arrives. A message without ``Cdc-Lsn`` (``Cdc-Replay``: republished by
``outbox replay`` or slot recovery) is a group of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cdc_bridge.core.headers import TX_LAST_HEADER

LSN_HEADER = "Cdc-Lsn"
INDEX_HEADER = "Cdc-Index"
MSG_ID_HEADER = "Nats-Msg-Id"

T = TypeVar("T")

# PostgreSQL's text form of an LSN; anything else in Cdc-Lsn is not the bridge's.
_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")


@dataclass(frozen=True, slots=True)
class Event:
    """One message of the stream, as the handler sees it."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    msg_id: str  # Nats-Msg-Id; "<stream>:<seq>" for a message published without one
    stream_seq: int
    cdc_lsn: str | None  # the source transaction's commit LSN; None for a replayed row
    cdc_index: int | None = None  # its place in that transaction
    tx_last: bool = False  # the last event the bridge published of its transaction


def event_of(
    stream: str, subject: str, data: bytes, headers: Mapping[str, str] | None, stream_seq: int
) -> Event:
    """An Event from a message's parts."""
    headers = dict(headers or {})
    index = headers.get(INDEX_HEADER)
    lsn = headers.get(LSN_HEADER)
    return Event(
        subject=subject,
        data=data,
        headers=headers,
        msg_id=headers.get(MSG_ID_HEADER) or f"{stream}:{stream_seq}",
        stream_seq=stream_seq,
        cdc_lsn=lsn if lsn is not None and _LSN.fullmatch(lsn) else None,
        cdc_index=int(index) if index is not None and index.isdigit() else None,
        tx_last=headers.get(TX_LAST_HEADER) == "true",
    )


@dataclass
class Group(Generic[T]):
    """The messages of one source transaction this consumer saw, in stream order, each
    with whatever the caller keeps beside it (the NATS message, to ack it)."""

    lsn: str | None
    events: list[Event] = field(default_factory=list)
    items: list[T] = field(default_factory=list)
    complete: bool = False  # False: a part of a transaction larger than the consumer's window

    def add(self, event: Event, item: T) -> None:
        self.events.append(event)
        self.items.append(item)


class Grouper(Generic[T]):
    """Collects events into source transactions (or one event per group)."""

    def __init__(self, *, whole_transactions: bool = True) -> None:
        self._whole = whole_transactions
        self._open: Group[T] | None = None

    @property
    def open(self) -> Group[T] | None:
        """The group still waiting for its end."""
        return self._open

    def add(self, event: Event, item: T) -> list[Group[T]]:
        """The groups ``event`` completes, oldest first (none, one or two)."""
        done: list[Group[T]] = []
        group = self._open
        if group is not None and group.lsn != event.cdc_lsn:
            # The last message of that transaction went to subjects we do not read.
            group.complete = True
            done.append(group)
            group = None
        if group is None:
            group = Group(event.cdc_lsn)
        group.add(event, item)
        if not self._whole or event.cdc_lsn is None or event.tx_last:
            group.complete = True
            done.append(group)
            group = None
        self._open = group
        return done

    def take_open(self) -> Group[T] | None:
        """The open group as it is (a part of its transaction); the next event with the
        same ``Cdc-Lsn`` starts the next part."""
        group, self._open = self._open, None
        return group
