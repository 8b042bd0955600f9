"""A consumer that handles the bridge's messages one source transaction at a time.

Every message the bridge publishes from a transaction carries that transaction's commit
LSN in ``Cdc-Lsn``; the last one it published carries ``Cdc-Tx-Last: true`` as well. A
consumer that reads only some subjects may never see that last message, so a group also
ends when a message with another ``Cdc-Lsn`` arrives: whichever comes first.
docs/application.md ("Grouping a transaction on the consumer side") shows this file's
grouping part and says what else to know.

It reads with an ephemeral pull consumer and acks a group's messages only after the
group was handled: a crash before that has them delivered again. Each group handed over
is printed as one JSON line (``lsn``, the message ids in order, and ``marked``: whether
the group ended at ``Cdc-Tx-Last``).

    python consumer_grouping.py --nats nats://127.0.0.1:4222 --stream OUTBOX \\
        --subject 'outbox.>' [--groups N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field

import nats
import nats.errors
from nats.aio.msg import Msg


@dataclass
class Group:
    """The messages of one source transaction that this consumer saw, in stream order."""

    lsn: str | None  # None: republished by `outbox replay` or slot recovery (Cdc-Replay)
    messages: list[Msg] = field(default_factory=list)
    marked: bool = False  # ended at Cdc-Tx-Last (not at the next transaction's Cdc-Lsn)


class TransactionGrouper:
    """Collects messages by Cdc-Lsn; a group is over at Cdc-Tx-Last or a new Cdc-Lsn."""

    def __init__(self) -> None:
        self._open: Group | None = None

    def add(self, msg: Msg) -> list[Group]:
        """The groups that ``msg`` completes, oldest first (none, one or two)."""
        headers = msg.headers or {}
        lsn = headers.get("Cdc-Lsn")
        done: list[Group] = []
        group = self._open
        if group is not None and group.lsn != lsn:
            # The last message of that transaction went to subjects we do not read.
            done.append(group)
            group = None
        if group is None:
            group = Group(lsn)
        group.messages.append(msg)
        # A replayed row has no transaction position: it is a group of its own.
        if lsn is None or headers.get("Cdc-Tx-Last") == "true":
            group.marked = lsn is not None
            done.append(group)
            group = None
        self._open = group
        return done


async def handle(group: Group) -> None:
    """Your transaction-at-a-time work goes here (one database transaction, say)."""
    ids = [(m.headers or {}).get("Nats-Msg-Id") for m in group.messages]
    print(json.dumps({"lsn": group.lsn, "ids": ids, "marked": group.marked}), flush=True)


async def consume(url: str, stream: str, subject: str, groups: int | None) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        # max_ack_pending (default 1,000) must exceed the largest transaction: a group's
        # messages stay unacked until the group is handed over.
        sub = await js.pull_subscribe(subject, stream=stream)
        grouper = TransactionGrouper()
        handed = 0
        while groups is None or handed < groups:
            try:
                batch = await sub.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                for group in grouper.add(msg):
                    await handle(group)
                    for done in group.messages:
                        await done.ack()
                    handed += 1
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--subject", required=True, help="the subjects to read ('outbox.>')")
    parser.add_argument("--groups", type=int, help="stop after this many groups")
    args = parser.parse_args()
    asyncio.run(consume(args.nats, args.stream, args.subject, args.groups))


if __name__ == "__main__":
    main()
