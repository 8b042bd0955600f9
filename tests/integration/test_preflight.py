"""check_stream_coverage against a real nats-server with JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.sink.coverage import check_stream_coverage


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0)
    yield client
    await client.close()


async def add_stream(nc: NatsClient, name: str, subjects: Sequence[str]) -> None:
    await nc.jsm().add_stream(StreamConfig(name=name, subjects=list(subjects)))


def bridge_config(
    nats_url: str,
    stream: str,
    stream_subjects: Sequence[str],
    routes: list[dict[str, Any]],
    dead_letter: str | None,
) -> BridgeConfig:
    document: dict[str, Any] = {
        "postgres": {"dsn": "postgresql://app@127.0.0.1/app"},
        "nats": {"servers": [nats_url], "stream": {"name": stream, "subjects": stream_subjects}},
        "routes": routes,
    }
    if dead_letter is not None:
        document["dead_letter"] = {"subject": dead_letter}
    return parse_config(yaml.safe_dump(document), env={})


async def test_everything_covered(nc: NatsClient, nats_url: str, unique_name: str) -> None:
    u, stream = unique_name, unique_name.upper()
    await add_stream(nc, stream, [f"{u}.>"])
    config = bridge_config(
        nats_url,
        stream,
        [f"{u}.>"],
        [
            {"when": {"aggregate_type": "ticket"}, "subject": f"{u}.ticket.{{event_type}}"},
            {"subject": f"{u}.{{aggregate_type}}.v-{{event_type}}"},
        ],
        f"{u}.dlq",
    )
    assert await check_stream_coverage(nc, config) == []


async def test_uncovered_dead_letter_and_route(
    nc: NatsClient, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    await add_stream(nc, stream, [f"{u}.events.>"])
    config = bridge_config(
        nats_url,
        stream,
        [f"{u}.events.>"],
        [
            {"when": {"aggregate_type": "ticket"}, "subject": f"{u}.events.{{event_type}}"},
            {"when": {"aggregate_type": "user"}, "subject": f"{u}.other.{{aggregate_type}}"},
            {"subject": f"{u}.events"},  # '>' needs one more token: not captured
        ],
        f"{u}.dlq",
    )
    problems = await check_stream_coverage(nc, config)
    context = f"stream {stream} stores {u}.events.>"
    assert problems == [
        f"dead_letter.subject: no stream captures {u}.dlq ({context})",
        f"routes[1].subject: no stream captures {u}.other.* "
        f"(template '{u}.other.{{aggregate_type}}'; {context})",
        f"routes[2].subject: no stream captures {u}.events (template '{u}.events'; {context})",
    ]


async def test_a_route_is_covered_when_some_of_its_subjects_are(
    nc: NatsClient, nats_url: str, unique_name: str
) -> None:
    """A stream on one value of a placeholder covers the route: rows with other values
    are dead-lettered one by one, which is no reason to refuse to start."""
    u, stream = unique_name, unique_name.upper()
    await add_stream(nc, stream, [f"{u}.ticket.*", f"{u}.dlq"])
    config = bridge_config(
        nats_url,
        stream,
        [f"{u}.ticket.*", f"{u}.dlq"],
        [{"subject": f"{u}.{{aggregate_type}}.{{event_type}}"}],
        f"{u}.dlq",
    )
    assert await check_stream_coverage(nc, config) == []


async def test_any_stream_of_the_account_counts(
    nc: NatsClient, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    await add_stream(nc, stream, [f"{u}.events.>"])
    await add_stream(nc, f"{stream}_DLQ", [f"{u}.dlq"])
    await add_stream(nc, f"{stream}_AUDIT", [f"{u}.audit.*"])
    config = bridge_config(
        nats_url,
        stream,
        [f"{u}.events.>"],
        [
            {"when": {"aggregate_type": "audit"}, "subject": f"{u}.audit.{{event_type}}"},
            {"subject": f"{u}.events.{{aggregate_type}}"},
        ],
        f"{u}.dlq",
    )
    assert await check_stream_coverage(nc, config) == []


async def test_missing_stream_and_changed_subjects_are_explained(
    nc: NatsClient, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    routes = [{"subject": f"{u}.events.{{event_type}}"}]
    missing = bridge_config(nats_url, stream, [f"{u}.>"], routes, None)
    assert await check_stream_coverage(nc, missing) == [
        f"routes[0].subject: no stream captures {u}.events.* "
        f"(template '{u}.events.{{event_type}}'; stream {stream} does not exist)"
    ]

    # The stream exists with other subjects than the config now names.
    await add_stream(nc, stream, [f"{u}.old.>"])
    changed = bridge_config(nats_url, stream, [f"{u}.>"], routes, None)
    [problem] = await check_stream_coverage(nc, changed)
    assert problem.endswith(
        f"stream {stream} stores {u}.old.>; nats.stream.subjects says {u}.>, but an "
        "existing stream is never changed by the bridge)"
    )
