"""Fast-ingest batches (ADR-50, nats-server 2.14+, a stream with ``allow_batched``): their
wire format and what the server's replies mean (pure).

A fast batch is no atomic batch: every message is stored as it comes, in order, and
with the gap mode ``fail`` the server stops the batch at the first message it misses or
refuses. All control data travels in the reply subject,
``<inbox>.<batch id>.<flow>.<gap mode>.<batch sequence>.<operation>.$FI``; the server
answers on the newest such subject it saw:

* ``{"type":"ack","seq":N,"msgs":M}``: every message up to batch sequence N is stored
  (the first message gets one with N = 0, and the next comes every M messages);
* ``{"type":"gap",...}`` and ``{"type":"err","seq":N,"error":{...}}``: message N was
  missed or refused; the batch then ends at N - 1 (its commit ack follows);
* a pub ack with ``batch`` and ``count`` once the commit has been stored: ``seq`` is the
  stream sequence of the batch's last stored message, ``count`` the messages the batch
  went through (duplicates included: JetStream skips a stored ``Nats-Msg-Id`` silently);
* a pub ack with an error and no count, on the refused message's own reply subject:
  the first message refused (10071 for a stale order guard, say), and every later one
  is then answered 10208 (unknown batch); or a later one refused before it reached the
  batch (too large for the stream's ``max_msg_size``, a sealed stream, account limits):
  the batch then ends at the next message (a gap), or, when it was the last, at an
  end-of-batch commit (operation 3) the publisher sends with its sequence.

Measured on nats-server 2.15.1: a subject-scoped expectation on the first message holds
beside other writers outside the space; a ping (operation 4) only repeats the last flow
ack, so a batch's tail is acked by its commit alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from cdc_bridge.sink.batches import Batch, BatchForming

SUFFIX = "$FI"
OP_START = 0
OP_APPEND = 1
OP_COMMIT = 2
OP_COMMIT_EOB = 3  # ends the batch without a message of its own
# Flow acks every FLOW messages at most (the server may choose fewer); 500 is the
# server's own ceiling, and measured the fastest (design.md "Batches").
FLOW = 500


def reply_subject(prefix: str, seq: int, last: bool) -> str:
    """The reply subject of the message at batch sequence ``seq``; ``prefix`` is
    ``<inbox>.<batch id>.<flow>.fail`` (see ``reply_prefix``)."""
    op = OP_COMMIT if last else (OP_START if seq == 1 else OP_APPEND)
    return f"{prefix}.{seq}.{op}.{SUFFIX}"


def reply_prefix(inbox: str, batch_id: str, flow: int = FLOW) -> str:
    return f"{inbox}.{batch_id}.{flow}.fail"


def batch_id_of(reply_tail: str) -> tuple[str, int] | None:
    """The batch id and the batch sequence of a reply, from its subject after
    ``<inbox>.``; None when it is no fast batch's."""
    if not reply_tail.endswith(SUFFIX):
        return None
    parts = reply_tail.split(".")
    try:
        return parts[0], int(parts[3])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply to a fast batch: ``kind`` says which of the module doc's shapes."""

    kind: Literal["flow", "gap", "err", "done", "refused"]
    seq: int = 0  # flow: stored through; err: the refused message; done: stream sequence
    count: int = 0  # done: the messages the batch went through
    error: str = ""  # the server's words (gap, err, refused)
    # err, refused: the error as a pub ack's payload, for acks.classify
    as_pub_ack: bytes = b""


def parse_reply(data: bytes) -> Reply:
    """What a reply payload says (an unreadable one is ``refused``)."""
    try:
        body = json.loads(data)
        kind = body.get("type")
        if kind == "ack":
            return Reply("flow", int(body["seq"]))
        if kind == "gap":
            return Reply("gap", int(body.get("seq", 0)), error=f"gap: {body}")
        if kind == "err":
            error = body.get("error") or {}
            as_pub_ack = json.dumps({"error": error}).encode()
            return Reply(
                "err", int(body.get("seq", 0)), error=_reason(error), as_pub_ack=as_pub_ack
            )
        error = body.get("error")
        if error is not None:
            return Reply("refused", error=_reason(error), as_pub_ack=data)
        return Reply("done", int(body["seq"]), int(body.get("count", 0)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Reply("refused", error=f"unreadable reply {data[:200]!r}")


def _reason(error: dict[str, object]) -> str:
    return f"{error.get('description', 'unknown error')} (err_code {error.get('err_code')})"


class FastForming(BatchForming):
    """What was published since the last batch was taken. A fast batch need not hold
    whole transactions (it is not atomic): everything forming goes, up to the limit."""

    __slots__ = ()

    @property
    def sendable(self) -> bool:
        return len(self) > 0

    def take(self) -> Batch | None:
        if not len(self):
            return None
        self._whole = len(self)  # (the base class takes whole transactions only)
        return super().take()
