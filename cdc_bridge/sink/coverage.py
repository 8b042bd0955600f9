"""Start-up checks against the live NATS server, before any row is read.

A route whose subjects no stream stores would send every one of its rows to the dead
letter subject (or stop the bridge); a dead letter subject no stream stores would
stop the bridge at the first poison row. Both are configuration mistakes that are
cheaper to report at start-up, one line each, than to discover row by row.

Run after the configured stream has been ensured: the server is asked which streams
capture a subject (``$JS.API.STREAM.NAMES`` with a ``subject`` filter), so a route may
be served by any stream of the account, not only the configured one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from nats.js.manager import JetStreamManager

from cdc_bridge.core.templates import parse_template

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig, StreamConfig

# Stands in for a placeholder's value while the subject's token shape is worked out.
# Templates are validated to hold no control characters, so it cannot occur in one.
_PLACEHOLDER = "\x00"
_ANY_TOKEN = "*"


def route_subject_filter(template: str) -> str:
    """The subjects a route's template can produce, as a NATS filter.

    A substituted value is always exactly one token (the router refuses anything
    else), so each token holding a placeholder becomes ``*``:
    ``events.{aggregate_type}.v-{event_type}`` -> ``events.*.*``.
    """
    rendered = _PLACEHOLDER.join(parse_template(template).literals)
    return ".".join(_ANY_TOKEN if _PLACEHOLDER in token else token for token in rendered.split("."))


async def check_stream_coverage(
    nc: NatsClient, config: BridgeConfig, *, timeout: float = 5.0
) -> list[str]:
    """One line per subject the bridge may publish to that no stream would store.

    Empty when every route and the dead letter subject fall in some stream. A route
    counts as covered when some of its subjects can be stored, e.g. ``events.{type}``
    with a stream on ``events.ticket``: rows of other types are dead-lettered one by
    one, which is the router's job, not a start-up error. NATS errors (no JetStream,
    timeouts) are raised as nats-py raises them.
    """
    jsm = nc.jsm(timeout=timeout)
    problems: list[str] = []
    context: str | None = None  # what the configured stream stores; looked up once

    async def report(key: str, subject: str, detail: str) -> None:
        nonlocal context
        if context is None:
            context = await _describe_stream(jsm, config.nats.stream)
        problems.append(f"{key}: no stream captures {subject} ({detail}{context})")

    if config.dead_letter is not None:
        subject = config.dead_letter.subject
        if not await _any_stream_captures(jsm, subject):
            await report("dead_letter.subject", subject, "")
    for index, route in enumerate(config.routes):
        subject_filter = route_subject_filter(route.subject)
        if not await _any_stream_captures(jsm, subject_filter):
            await report(
                f"routes[{index}].subject", subject_filter, f"template {route.subject!r}; "
            )
    return problems


async def _any_stream_captures(jsm: JetStreamManager, subject: str) -> bool:
    # The server matches the filter against every stream's subjects with overlap
    # semantics: "events.*" finds a stream on "events.ticket" as well as "events.>".
    try:
        await jsm.find_stream_name_by_subject(subject)
    except NotFoundError:
        return False
    return True


async def _describe_stream(jsm: JetStreamManager, wanted: StreamConfig) -> str:
    """What the configured stream really stores: an existing stream keeps the subjects
    it was created with, whatever the config says now."""
    try:
        info = await jsm.stream_info(wanted.name)
    except NotFoundError:
        return f"stream {wanted.name} does not exist"
    live = tuple(info.config.subjects or ())
    text = f"stream {wanted.name} stores {', '.join(live) if live else 'no subjects'}"
    if set(live) != set(wanted.subjects):
        text += (
            f"; nats.stream.subjects says {', '.join(wanted.subjects)}, but an existing "
            "stream is never changed by the bridge"
        )
    return text
