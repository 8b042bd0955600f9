"""Operability against a real bridge, PostgreSQL and nats-server: the HTTP probes, /status
and /metrics, hot standby (kill -9 and SIGTERM of the active bridge under load, audited),
and the logs (JSON lines, console rendering, no line per event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb
from support.bridge import STARTUP_TIMEOUT, BridgeProcess, MakeBridge, log_event, parse_json_line
from support.chaos import (
    Auditor,
    LoadGenerator,
    chaos_bridge_config,
    install_chaos_schema,
)
from support.nats_helpers import stream_info
from support.waiting import wait_until

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.pginstall import PgInstall
from cdc_bridge.dev.processes import free_port

# Run on every PostgreSQL major version installed (embedded 18, system 15)
pytestmark = pytest.mark.both_postgres

TAKEOVER_LIMIT = 10.0  # the issue's promise: a standby streams within 10 s of the loss
NOT_READY_LIMIT = 10.0  # /readyz must turn 503 within 10 s of NATS going away

# Every metric the issue names, as it appears in the exposition (counters end in _total).
ISSUE_METRICS = (
    "cdc_bridge_events_published_total",
    "cdc_bridge_dead_letter_total",
    "cdc_bridge_publish_latency_seconds",
    "cdc_bridge_confirmed_lsn",
    "cdc_bridge_replication_lag_bytes",
    "cdc_bridge_slot_retained_bytes",
    "cdc_bridge_in_flight",
    "cdc_bridge_reconnects_total",
    "cdc_bridge_is_leader",
    "cdc_bridge_ready",  # /readyz as a series, for the "not ready" alert
)
STATUS_KEYS = (
    "role", "slot", "stream", "confirmed_lsn", "lag_bytes", "in_flight",
    "events_published", "dead_lettered", "last_error", "versions",
)


# --- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


# No proxies from the environment: these requests go to loopback only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(url: str, *, method: str = "GET", timeout: float = 5.0) -> HttpReply:
    """One request; an error status is a reply like any other, not an exception."""
    request = urllib.request.Request(url, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return HttpReply(
                response.status, response.headers.get("Content-Type", ""), response.read()
            )
    except urllib.error.HTTPError as error:
        with error:
            return HttpReply(error.code, error.headers.get("Content-Type", ""), error.read())


def readyz_status(base: str) -> int:
    return http_request(f"{base}/readyz").status


# --- metrics -----------------------------------------------------------------------------------

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def metric_samples(text: str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels."""
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_families(text: str) -> set[str]:
    """The names the exposition declares (``# TYPE`` lines), samples or not."""
    return {
        line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")
    }


def metric(base: str, name: str, **labels: str) -> float | None:
    samples = metric_samples(http_request(f"{base}/metrics").text)
    return samples.get((name, tuple(sorted(labels.items()))))


# --- outbox and stream -------------------------------------------------------------------------


def commit_rows(dsn: str, transactions: Sequence[Sequence[str]]) -> int:
    """One transaction per inner sequence, one outbox row per aggregate type; rows committed."""
    rows = 0
    with psycopg.connect(dsn) as conn:
        for aggregate_types in transactions:
            with conn.transaction():
                for index, aggregate_type in enumerate(aggregate_types):
                    conn.execute(
                        "INSERT INTO public.outbox"
                        " (aggregate_type, aggregate_id, event_type, payload)"
                        " VALUES (%s, 'A-1', 'created', %s)",
                        (aggregate_type, Jsonb({"index": index})),
                    )
                    rows += 1
    return rows


def stream_holds(nats_url: str, stream: str) -> int:
    return int(asyncio.run(stream_info(nats_url, stream)).state.messages)


def start_streaming(
    make_bridge: MakeBridge, config: Mapping[str, Any], **kwargs: Any
) -> BridgeProcess:
    bridge = make_bridge(config, **kwargs)
    bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
    return bridge


def routed_config(dsn: str, nats_url: str, name: str) -> dict[str, Any]:
    """Two named routes and a dead-letter subject: no catch-all, so "mystery" rows are
    dead-lettered ("no route matches")."""
    config = chaos_bridge_config(dsn=dsn, nats_url=nats_url, name=name)
    config["routes"] = [
        {"name": "tickets", "when": {"aggregate_type": "ticket"},
         "subject": f"{name}.ticket.{{event_type}}"},
        {"name": "others", "when": {"aggregate_type": ["user", "order"]},
         "subject": f"{name}.other.{{aggregate_type}}"},
    ]
    config["dead_letter"] = {"subject": f"{name}.dlq"}
    return config


def assert_json_log_lines(lines: Sequence[str]) -> None:
    """Every line is one JSON object with the stable ``event`` and ``level`` keys."""
    assert lines, "the bridge logged nothing"
    for line in lines:
        record = parse_json_line(line)
        assert record is not None, f"not a JSON object: {line!r}"
        assert isinstance(record.get("event"), str) and record["event"], line
        assert record.get("level") in ("debug", "info", "warning", "error", "critical"), line


# --- endpoints ---------------------------------------------------------------------------------


def test_probes_status_and_metrics_while_streaming(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, pg_install: PgInstall
) -> None:
    config = routed_config(pg_dsn, nats_url, unique_name)
    bridge = start_streaming(make_bridge, config)
    base = bridge.http_url()

    alive = http_request(f"{base}/healthz")
    assert alive.status == 200
    assert alive.content_type.startswith("application/json")
    # "streaming" is logged just before the role flips: wait for the flip, not a moment.
    wait_until(lambda: readyz_status(base) == 200, message="/readyz never 200 while streaming")
    assert http_request(f"{base}/readyz").json() == {"status": "ready"}

    sent = commit_rows(
        pg_dsn,
        [["ticket"] * 4 + ["user"] * 2, ["ticket"] * 3, ["order"] * 3, ["mystery"]],
    )
    tickets, others, dead = 7, 5, 1
    assert sent == tickets + others + dead
    stream = unique_name.upper()
    wait_until(lambda: stream_holds(nats_url, stream) == sent, message="rows never stored")

    def published(route: str) -> float | None:
        return metric(base, "cdc_bridge_events_published_total", route=route)

    # Acks are counted as they arrive: the counters settle right after the stream has them.
    wait_until(
        lambda: (published("tickets"), published("others"), published("dead_letter"))
        == (tickets, others, dead),
        message="events_published_total{route} never matched the rows sent",
    )
    text = http_request(f"{base}/metrics").text
    samples = metric_samples(text)
    assert samples[("cdc_bridge_dead_letter_total", (("reason", "no_route"),))] == dead
    assert samples[("cdc_bridge_is_leader", ())] == 1
    assert samples[("cdc_bridge_ready", ())] == 1
    assert samples[("cdc_bridge_in_flight", ())] == 0
    # Commit-to-ack latency: one observation per transaction whose acks completed after its
    # commit was read, so at least one and at most one per transaction.
    assert 1 <= samples[("cdc_bridge_publish_latency_seconds_count", ())] <= 4
    families = metric_families(text)
    missing = [name for name in ISSUE_METRICS if name not in families]
    assert not missing, f"metrics the issue names are missing: {missing}"

    def status() -> dict[str, Any]:
        reply = http_request(f"{base}/status")
        assert reply.status == 200
        assert reply.content_type.startswith("application/json")
        body: dict[str, Any] = reply.json()
        return body

    current = status()
    assert [key for key in STATUS_KEYS if key not in current] == []
    assert current["role"] == "streaming"
    assert current["slot"] == unique_name
    assert current["stream"] == stream
    assert current["events_published"] == sent  # dead letters are acked publishes too
    assert current["dead_lettered"] == dead
    assert current["in_flight"] == 0
    assert isinstance(current["confirmed_lsn"], str) and "/" in current["confirmed_lsn"]
    assert current["last_error"] is None
    versions = current["versions"]
    assert versions["cdc_bridge"] and versions["python"]
    assert versions["postgres"] and versions["postgres"].startswith(f"{pg_install.major}.")
    assert re.fullmatch(r"\d+\.\d+\.\d+([-+].+)?", versions["nats_server"])  # as INFO says

    unknown = http_request(f"{base}/no-such-thing")
    assert unknown.status == 404
    assert "error" in unknown.json()
    assert http_request(f"{base}/healthz", method="POST").status == 405


def test_readyz_follows_nats(
    pg_dsn: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    config = chaos_bridge_config(dsn=pg_dsn, nats_url=isolated_nats_server.url, name=unique_name)
    bridge = start_streaming(make_bridge, config)
    base = bridge.http_url()
    wait_until(lambda: readyz_status(base) == 200, message="/readyz never 200 while streaming")

    isolated_nats_server.stop()
    went_away = time.monotonic()
    wait_until(
        lambda: readyz_status(base) == 503,
        timeout=NOT_READY_LIMIT,
        interval=0.1,
        message=f"/readyz still 200 {NOT_READY_LIMIT:g}s after NATS went away",
    )
    print(f"/readyz turned 503 {time.monotonic() - went_away:.2f}s after NATS stopped")
    not_ready = http_request(f"{base}/readyz")
    assert not_ready.content_type.startswith("application/json")
    body = not_ready.json()
    assert body["status"] == "not ready"
    assert isinstance(body["reason"], str) and body["reason"]
    assert http_request(f"{base}/healthz").status == 200  # alive, only not ready
    assert metric(base, "cdc_bridge_ready") == 0
    wait_until(
        lambda: http_request(f"{base}/status").json()["last_error"] is not None,
        message="/status never showed the NATS failure as last_error",
    )

    since = bridge.mark()
    isolated_nats_server.start()  # same port, same store
    # Reconnect backoff is at most a few seconds after a short outage.
    wait_until(
        lambda: readyz_status(base) == 200, timeout=STARTUP_TIMEOUT,
        message="/readyz not 200 again after NATS came back",
    )
    bridge.wait_for_log(log_event("streaming"), since=since)
    assert metric(base, "cdc_bridge_ready") == 1
    reconnects = metric(base, "cdc_bridge_reconnects_total", target="nats")
    assert reconnects is not None and reconnects >= 1

    # The failure path logs JSON too (no stray tracebacks from nats-py or asyncio).
    assert_json_log_lines(bridge.stderr_lines)
    assert bridge.stdout_lines == []


# --- hot standby -------------------------------------------------------------------------------


@pytest.fixture
def load_dsn(pg_dsn: str) -> str:
    install_chaos_schema(pg_dsn)
    return pg_dsn


@dataclass(frozen=True, slots=True)
class Roles:
    leader: BridgeProcess
    standby: BridgeProcess
    leader_url: str
    standby_url: str


def start_pair(make_bridge: MakeBridge, config: Mapping[str, Any]) -> Roles:
    """Two bridges, same config: the first streams, the second must wait as standby."""
    leader = start_streaming(make_bridge, config)
    standby = make_bridge(config)
    standby.wait_for_log(log_event("standby"), timeout=STARTUP_TIMEOUT)
    return Roles(leader, standby, leader.http_url(), standby.http_url())


def role(base: str) -> str:
    return str(http_request(f"{base}/status").json()["role"])


def assert_one_streams(roles: Roles) -> None:
    wait_until(lambda: role(roles.leader_url) == "streaming", message="leader not streaming")
    assert role(roles.standby_url) == "standby"
    assert metric(roles.leader_url, "cdc_bridge_is_leader") == 1
    assert metric(roles.standby_url, "cdc_bridge_is_leader") == 0
    assert metric(roles.leader_url, "cdc_bridge_ready") == 1
    assert metric(roles.standby_url, "cdc_bridge_ready") == 0
    assert readyz_status(roles.leader_url) == 200
    not_ready = http_request(f"{roles.standby_url}/readyz")
    assert not_ready.status == 503
    assert "standby" in not_ready.json()["reason"]
    assert http_request(f"{roles.standby_url}/healthz").status == 200
    assert not any(
        record.get("event") == "streaming" for record in roles.standby.json_records()
    ), "the standby streamed while another bridge held the lock"


@pytest.fixture
def load_generators() -> Iterator[list[LoadGenerator]]:
    """Load generators a test started: stopped at teardown if the test failed early."""
    started: list[LoadGenerator] = []
    yield started
    for load in started:
        with contextlib.suppress(AssertionError):  # the test already failed: keep its error
            load.stop()


@pytest.mark.parametrize(
    "how", [pytest.param(signal.SIGKILL, id="kill-9"), pytest.param(signal.SIGTERM, id="sigterm")]
)
def test_standby_takes_over_under_load(
    load_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    load_generators: list[LoadGenerator],
    how: signal.Signals,
) -> None:
    config = chaos_bridge_config(dsn=load_dsn, nats_url=nats_url, name=unique_name)
    roles = start_pair(make_bridge, config)
    assert_one_streams(roles)

    load = LoadGenerator(load_dsn, rows_per_second=200.0)
    load_generators.append(load)
    load.start()
    load.wait_for_rows(300)

    since = roles.standby.mark()
    roles.leader.send_signal(how)
    lost_at = time.monotonic()
    roles.standby.wait_for_log(
        log_event("leadership_acquired"), timeout=TAKEOVER_LIMIT + 5, since=since
    )
    acquired_after = time.monotonic() - lost_at
    roles.standby.wait_for_log(log_event("streaming"), timeout=TAKEOVER_LIMIT + 5, since=since)
    streaming_after = time.monotonic() - lost_at
    print(
        f"{how.name}: leadership acquired after {acquired_after:.2f}s, "
        f"streaming after {streaming_after:.2f}s"
    )
    assert streaming_after <= TAKEOVER_LIMIT, (
        f"the standby took {streaming_after:.1f}s to stream after {how.name} of the leader"
    )
    old_leader_code = roles.leader.wait_for_exit()
    assert old_leader_code == (-9 if how == signal.SIGKILL else 0)

    load.wait_for_rows(300)  # the new leader streams under load, too
    load_generators.remove(load)
    report = load.stop()
    result = Auditor(load_dsn, nats_url, unique_name.upper()).audit(f"standby after {how.name}")
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result)
    assert result.committed == report.rows_committed

    new_leader = roles.standby_url
    assert role(new_leader) == "streaming"
    assert metric(new_leader, "cdc_bridge_is_leader") == 1
    assert readyz_status(new_leader) == 200

    # The old leader, back again, waits as standby behind the new one.
    again = make_bridge(config)
    again.wait_for_log(log_event("standby"), timeout=STARTUP_TIMEOUT)
    assert_one_streams(Roles(roles.standby, again, new_leader, again.http_url()))


# --- logs --------------------------------------------------------------------------------------


def test_logs_are_json_lines_and_not_one_per_event(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = chaos_bridge_config(dsn=pg_dsn, nats_url=nats_url, name=unique_name)
    bridge = start_streaming(make_bridge, config)
    since = bridge.mark()
    events = 200
    sent = commit_rows(pg_dsn, [["ticket"] * 10 for _ in range(events // 10)])
    assert sent == events
    wait_until(
        lambda: stream_holds(nats_url, unique_name.upper()) == events,
        message="events never stored",
    )
    during = bridge.lines[since:]
    # A progress line every 30 s at most; certainly nothing like one line per event.
    assert len(during) <= 3, f"{len(during)} log lines for {events} events:\n" + "\n".join(
        during[:10]
    )

    assert bridge.terminate() == 0
    assert_json_log_lines(bridge.stderr_lines)
    assert bridge.stdout_lines == []
    events_logged = {record["event"] for record in bridge.json_records()}
    assert {"starting", "http_listening", "leadership_acquired", "streaming"} <= events_logged
    streaming = next(r for r in bridge.json_records() if r["event"] == "streaming")
    assert streaming["slot"] == unique_name
    assert "lsn" in streaming and "timestamp" in streaming


def test_console_log_format_is_for_people(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = chaos_bridge_config(dsn=pg_dsn, nats_url=nats_url, name=unique_name)
    bridge = make_bridge(config, extra_args=["--log-format", "console"])  # the last flag wins
    line = bridge.wait_for_log(
        lambda text: "streaming" in text and unique_name in text, timeout=STARTUP_TIMEOUT
    )
    assert parse_json_line(line) is None
    assert "info" in line
    assert bridge.terminate() == 0
    lines = [text for text in bridge.stderr_lines if text.strip()]
    assert lines
    assert all(parse_json_line(text) is None for text in lines), "JSON in console mode"


def test_log_level_warning_hides_info_lines(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = chaos_bridge_config(dsn=pg_dsn, nats_url=nats_url, name=unique_name)
    port = free_port()  # no http_listening line to read it from at this level
    config["http"] = {"listen": f"127.0.0.1:{port}"}
    bridge = make_bridge(config, extra_args=["--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return readyz_status(base) == 200
        except OSError:  # not listening yet
            return False

    wait_until(ready, timeout=STARTUP_TIMEOUT, message="never ready")
    assert bridge.terminate() == 0
    levels = [record.get("level") for record in bridge.json_records()]
    assert "info" not in levels, bridge.lines
