"""A publish refused because the stream is full (pure): which limit, and how to lift it.

A stream with ``discard: new`` refuses a message once a limit is reached, rather than
removing old messages for it. nats-server answers every such refusal with err_code 10077
(JSStreamStoreFailedF, "{err}" filled in with the store's own error: ErrMaxMsgs,
ErrMaxBytes or ErrMaxMsgsPerSubject in server/store.go), so the description is what
tells the limits apart. Nothing about the message is wrong: the refusal stays transient,
and the bridge holds the slot until someone makes room.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

STORE_FAILED = 10077  # JSStreamStoreFailedF: the store refused the message


@dataclass(frozen=True, slots=True)
class StreamLimit:
    key: str  # the stream config's JSON key, as `nats stream info --json` shows it
    flag: str  # `nats stream edit`'s option for it


# The store's words (server/store.go) -> the limit that said no.
_REFUSALS = {
    "maximum messages exceeded": StreamLimit("max_msgs", "--max-msgs"),
    "maximum bytes exceeded": StreamLimit("max_bytes", "--max-bytes"),
    "maximum messages per subject exceeded": StreamLimit(
        "max_msgs_per_subject", "--max-msgs-per-subject"
    ),
}
LIMIT_KEYS = tuple(limit.key for limit in _REFUSALS.values())

NOTHING_LOST = (
    "nothing is lost: the bridge holds the slot and delivers everything once the limit is raised"
)


def refused_limit(err_code: object, description: str) -> StreamLimit | None:
    """The limit a pub-ack error names, or None when it is not a full stream."""
    if err_code != STORE_FAILED:
        return None
    return _REFUSALS.get(description.strip().lower())


def describe_limit_refusal(
    stream: str, limit: StreamLimit, config: Mapping[str, object] | None, subject: str
) -> str:
    """The one line an operator needs: the stream, the limit and its value (``config`` is
    the stream's config as its info gives it; None when it could not be read), the fix."""
    value = config.get(limit.key) if config is not None else None
    shown = f"{limit.key} {value}" if isinstance(value, int) else f"its {limit.key}"
    if limit.key == "max_msgs_per_subject":
        # The per-subject limit refuses only with discard_new_per_subject: turning that
        # off lets the limit drop the subject's oldest message instead.
        other = "or set discard_new_per_subject: false (or discard: old)"
    else:
        other = f"or set discard: old (`nats stream edit {stream} --discard old`)"
    return (
        f"stream {stream} is full: {shown} is reached and its discard policy is new, so it "
        f"refused a message on {subject}; raise the limit with "
        f"`nats stream edit {stream} {limit.flag} <more>` {other}; {NOTHING_LOST}"
    )
