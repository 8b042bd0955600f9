"""Has the stream lost what it acked? The decision, from what was seen before and what
STREAM.INFO says now (pure: the bridge's watcher asks the server, bridge/stream_watch.py).

Acked is not the same as kept: the stream can be deleted, or nats-server restarted on
an empty store, while the bridge runs. Re-creating the stream and carrying on would
hide the loss, and every confirmation after it moves the slot past events nobody
holds. Three signs, each cheap to read from one STREAM.INFO answer:

- the stream is gone, or its ``created`` time changed (deleted and made again);
- its last sequence went back: a store restored from an older copy. The stream-wide
  sequence is compared, not the last of the bridge's subject space: purges and
  ``max_age`` expiry remove messages but never lower the stream's last sequence, while
  a space's last message may expire and look like a step back;
- its subjects no longer cover a route (or the dead-letter subject) they covered when
  the session started: every row of that route would be dead-lettered from then on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.subjects import filters_overlap


class StreamLost(FatalError):
    """The stream lost (or will no longer store) what the bridge publishes: stop
    without confirming anything more."""


@dataclass(frozen=True, slots=True)
class StreamLook:
    """What one STREAM.INFO answer says about the stream."""

    created: datetime | None
    last_seq: int
    subjects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StreamSeen:
    """The stream as the bridge last saw it: what a fresh look is compared with."""

    name: str
    created: datetime | None
    last_seq: int
    # (config key, subject filter) for each subject the bridge publishes to that the
    # stream stored when it was first seen: those must stay covered.
    served: tuple[tuple[str, str], ...]

    def after(self, look: StreamLook) -> StreamSeen:
        """Seen again, unchanged: the last sequence moves on."""
        return StreamSeen(self.name, self.created, look.last_seq, self.served)


def first_seen(name: str, look: StreamLook, published: Iterable[tuple[str, str]]) -> StreamSeen:
    """The stream when a session starts; ``published``: (config key, subject filter) of
    every subject the bridge may publish to (routes, the dead-letter subject)."""
    served = tuple(
        (key, subject_filter)
        for key, subject_filter in published
        if any(filters_overlap(subject_filter, s) for s in look.subjects)
    )
    return StreamSeen(name, look.created, look.last_seq, served)


def stream_loss(seen: StreamSeen, look: StreamLook | None) -> str | None:
    """What happened to the stream since ``seen``, in words; None: nothing lost.
    ``look`` is None when the stream does not exist."""
    name = seen.name
    if look is None:
        return f"stream {name} was deleted"
    if look.created != seen.created:
        return f"stream {name} was re-created at {_when(look.created)}"
    if look.last_seq < seen.last_seq:
        return f"stream {name}'s last sequence went back from {seen.last_seq} to {look.last_seq}"
    for key, subject_filter in seen.served:
        if not any(filters_overlap(subject_filter, s) for s in look.subjects):
            stored = ", ".join(look.subjects) or "nothing"
            return (
                f"stream {name}'s subjects were changed to {stored}: they no longer "
                f"cover {key} ({subject_filter})"
            )
    return None


def lost_window(seen: StreamSeen, look: StreamLook | None) -> str:
    """Which acked messages are at risk after ``stream_loss`` said something."""
    if look is not None and look.created == seen.created and look.last_seq < seen.last_seq:
        return f"messages {look.last_seq + 1}..{seen.last_seq} of it are gone"
    if look is not None and look.created == seen.created:
        return "its rows would be dead-lettered from now on; nothing stored was lost"
    return (
        f"every message it held since it was created at {_when(seen.created)} is gone "
        f"(through sequence {seen.last_seq} at the last check)"
    )


def _when(created: datetime | None) -> str:
    return created.isoformat() if created is not None else "an unknown time"
