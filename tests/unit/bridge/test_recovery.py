"""When a session counts as recovered: up for the healthy interval, and it confirmed
something or had nothing to publish. Only then is the reconnect backoff reset and
`recovered` logged (issue 27, item 10)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import pytest
import structlog
from structlog.testing import capture_logs

from cdc_bridge.bridge import supervisor
from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.bridge.session import BridgeState
from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.sink.publisher import PublishError
from cdc_bridge.source.leadership import Leadership

CONFIG = """\
postgres:
  dsn: postgresql://app@127.0.0.1:5432/app
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
routes:
  - subject: "events.{aggregate_type}"
"""

HEALTHY_AFTER = 0.05  # the product's 10 s, shortened


@pytest.fixture(autouse=True)
def unfiltered_logs() -> Iterator[None]:
    """Other tests configure structlog (a level filter would drop the info line
    `recovered` before capture_logs sees it): these start from the defaults."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


async def logged(logs: Sequence[Mapping[str, Any]], event: str, timeout: float = 5.0) -> bool:
    """Whether ``event`` is logged within ``timeout``: a condition, not a fixed sleep,
    so a loaded machine is not a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while event not in events(logs):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_the_rule() -> None:
    recovered = supervisor.has_recovered
    after = supervisor.HEALTHY_AFTER_SECONDS
    # Up long enough, and it confirmed something, or had nothing to publish.
    assert recovered(after, alive=True, confirmed=True, idle=False, healthy_after=after)
    assert recovered(after, alive=True, confirmed=False, idle=True, healthy_after=after)
    # Up long enough, but its events still wait: not yet.
    assert not recovered(600.0, alive=True, confirmed=False, idle=False, healthy_after=after)
    # Confirmed, but not up long enough yet.
    assert not recovered(after - 0.1, alive=True, confirmed=True, idle=False, healthy_after=after)
    # A session that died is not recovered, however soon or late it is asked.
    assert not recovered(0.006, alive=False, confirmed=True, idle=True, healthy_after=after)
    assert not recovered(600.0, alive=False, confirmed=True, idle=True, healthy_after=after)


class RecordingBackoff(supervisor.Backoff):
    def __init__(self, first: float, cap: float) -> None:
        super().__init__(first, cap)
        self.delays: list[float] = []

    def next_delay(self) -> float:
        delay = super().next_delay()
        self.delays.append(delay)
        return delay


class FakeLeadership:
    """Leadership that is never lost."""

    async def hold(self) -> None:
        await asyncio.Event().wait()

    async def still_held(self) -> bool:
        return True

    async def release(self) -> None:
        pass


class FakeProgress:
    """A session's progress as the supervisor reads it (status.LiveProgress)."""

    def __init__(self, confirmed: int = 100, in_flight: int = 0) -> None:
        self.confirmed_lsn = confirmed
        self.waiting = in_flight

    def confirmed(self) -> int:
        return self.confirmed_lsn

    def in_flight(self) -> int:
        return self.waiting

    def last_ack_at(self) -> float:
        return 0.0


Session = Callable[[BridgeState, Callable[[], None]], Awaitable[None]]


async def lead_with(
    monkeypatch: pytest.MonkeyPatch, sessions: list[Session], backoff: supervisor.Backoff
) -> int | None:
    """Run the supervisor's session loop over fake sessions, one per attempt; the
    process is stopped when they run out. Returns the exit code."""
    config: BridgeConfig = parse_config(CONFIG, env={})
    state = BridgeState(status=BridgeStatus(slot="s", stream="OUTBOX"), metrics=Metrics())
    stop = asyncio.Event()
    remaining = list(sessions)

    async def run_session(
        config: BridgeConfig,
        router: object,
        session_stop: asyncio.Event,
        state: BridgeState,
        on_streaming: Callable[[], None],
    ) -> None:
        if not remaining:
            stop.set()
            return
        await remaining.pop(0)(state, on_streaming)

    monkeypatch.setattr(supervisor, "run_session", run_session)
    leadership = cast(Leadership, FakeLeadership())
    return await asyncio.wait_for(
        supervisor.lead(
            config, leadership, stop, state, backoff=backoff, healthy_after=HEALTHY_AFTER
        ),
        timeout=30,
    )


async def fails_at_once(state: BridgeState, on_streaming: Callable[[], None]) -> None:
    state.status.progress = FakeProgress()
    on_streaming()
    await asyncio.sleep(0.001)
    raise PublishError("no ack for the first message")


def events(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(line["event"]) for line in logs]


async def test_sessions_that_fail_at_once_back_off_to_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Waits longer than the healthy interval: before, its timer (started with the
    # session) fired during them and reset the backoff of a session long dead.
    backoff = RecordingBackoff(first=0.02, cap=0.16)
    with capture_logs() as logs:
        code = await lead_with(monkeypatch, [fails_at_once] * 7, backoff)
    assert code == 0
    assert backoff.delays == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16, 0.16]
    assert "recovered" not in events(logs)
    assert "session_failed" in events(logs)


async def test_a_session_up_with_nothing_to_publish_has_recovered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def idle_then_fails(state: BridgeState, on_streaming: Callable[[], None]) -> None:
        state.status.progress = FakeProgress()  # nothing in flight, no rows, ever
        on_streaming()
        await logged(logs, "recovered")
        raise PublishError("NATS connection lost")

    backoff = RecordingBackoff(first=0.01, cap=0.16)
    sessions: list[Session] = [fails_at_once, fails_at_once, idle_then_fails]
    with capture_logs() as logs:
        code = await lead_with(monkeypatch, sessions, backoff)
    assert code == 0
    assert backoff.delays == [0.01, 0.02, 0.01]  # reset by the idle session
    assert events(logs).count("recovered") == 1


async def test_a_session_recovers_when_it_confirms_not_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []  # what the session saw logged while it ran

    async def confirms_late_then_fails(
        state: BridgeState, on_streaming: Callable[[], None]
    ) -> None:
        progress = FakeProgress(confirmed=100, in_flight=1)
        state.status.progress = progress
        on_streaming()
        state.stats.rows += 1  # published, waiting for its ack
        await asyncio.sleep(HEALTHY_AFTER * 3)
        seen.append("recovered" if "recovered" in events(logs) else "waiting")
        progress.confirmed_lsn, progress.waiting = 200, 0  # acked; the slot confirmed
        seen.append("recovered" if await logged(logs, "recovered") else "waiting")
        raise PublishError("NATS connection lost")

    backoff = RecordingBackoff(first=0.01, cap=0.16)
    with capture_logs() as logs:
        code = await lead_with(monkeypatch, [fails_at_once, confirms_late_then_fails], backoff)
    assert code == 0
    assert seen == ["waiting", "recovered"]
    assert backoff.delays == [0.01, 0.01]
    assert events(logs).count("recovered") == 1
