"""Keeping commit order in the stream when a publish fails (pure).

The publisher pipelines: message k+1 is on the wire before k is acked. If k is lost
(a stream leader change, a cut connection) while k+1 is stored, replaying k later
would put it after k+1. So every message to the bridge's own stream names its
predecessor, and JetStream refuses k+1 when k is missing; the session fails and the
replay restores order. JetStream checks deduplication before these expectations, so
replays of stored messages are still answered as duplicates.

How a message names its predecessor:

* With a subject space (``nats.subject_space``, NATS 2.11+), a message whose
  predecessors are all acked names the sequence of the last one within the space:
  ``Nats-Expected-Last-Subject-Sequence`` with the space as
  ``Nats-Expected-Last-Subject-Sequence-Subject``. Writers outside the space cannot
  break that. The first message of a session names the space's last sequence.
* A message sent while its predecessor is still unacked cannot name its sequence (the
  stream assigns it at store time, and other writers move it): it names the
  predecessor's id with ``Nats-Expected-Last-Msg-Id``, which JetStream checks
  stream-wide. A message of another writer stored between the two would break it.
  JetStream has no per-message header that names an unacked predecessor within a
  subject filter (its fast-ingest batches, 2.14+, do: fast_publisher.py, nats.fast_ingest), so
  the guard watches for other writers instead: when the stream's last sequence is not
  the space's at the start, or an ack's sequence jumps past the messages it settles,
  the stream is ``shared`` and the publisher sends one chained message per ack round
  trip, each naming its predecessor's sequence within the space. Pipelining comes back
  after ``QUIET_ACKS`` acks in a row without another writer's message in between.
* Without a space (older servers, or routes that share no prefix), today's stream-wide
  guard: the first message names the stream's last sequence
  (``Nats-Expected-Last-Sequence``), every later one its predecessor's id. Another
  writer of the stream then breaks nearly every session.
"""

from __future__ import annotations

from cdc_bridge.core.headers import (
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
)
from cdc_bridge.core.subjects import subject_matches

_CACHE_LIMIT = 10_000
# Acks in a row with no other writer's message between ours before pipelining again.
QUIET_ACKS = 1000


class OrderGuard:
    def __init__(
        self,
        stream_subjects: tuple[str, ...],
        last_seq: int,
        space: str | None = None,
        *,
        shared: bool = False,
    ) -> None:
        """``last_seq``: the last sequence within ``space`` when the session started (the
        stream's last sequence when there is no space); ``shared``: others write the
        stream too (only with a space)."""
        self._patterns = stream_subjects
        self._covers: dict[str, bool] = {}
        self._space = space
        self._last_seq = last_seq
        self._last_msg_id: str | None = None
        self._shared = shared and space is not None
        self._quiet = 0

    @property
    def space(self) -> str | None:
        return self._space

    @property
    def shared(self) -> bool:
        """Others write the stream: chained messages go one per ack round trip."""
        return self._shared

    def covers(self, subject: str) -> bool:
        """Does the guarded stream capture this subject? (cached: subjects repeat)"""
        known = self._covers.get(subject)
        if known is None:
            if len(self._covers) >= _CACHE_LIMIT:
                self._covers.clear()
            known = any(subject_matches(p, subject) for p in self._patterns)
            self._covers[subject] = known
        return known

    def expectation(self, settled: bool = False) -> str:
        """The header lines that name the next message's predecessor; ``settled``: every
        message sent before it is acked (its predecessor's sequence is known)."""
        space = self._space
        if space is not None and (settled or self._last_msg_id is None):
            return (
                f"{EXPECTED_LAST_SUBJECT_SEQUENCE}: {self._last_seq}\r\n"
                f"{EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT}: {space}\r\n"
            )
        if self._last_msg_id is None:
            return f"{EXPECTED_LAST_SEQUENCE}: {self._last_seq}\r\n"
        return f"{EXPECTED_LAST_MSG_ID}: {self._last_msg_id}\r\n"

    def advance(self, msg_id: str) -> None:
        """The message with ``msg_id`` was sent with ``expectation()``: it is the next
        one's predecessor."""
        self._last_msg_id = msg_id

    def stored(self, seq: int, settled: int = 1) -> None:
        """An ack of ours at stream sequence ``seq`` settled ``settled`` chained messages
        (the newest sent, when nothing is left in flight)."""
        if self._space is not None:
            interleaved = seq != self._last_seq + settled
            if interleaved:
                self._shared, self._quiet = True, 0
            elif self._shared:
                self._quiet += 1
                if self._quiet >= QUIET_ACKS:
                    self._shared = False
        self._last_seq = seq
