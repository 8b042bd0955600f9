"""Process supervision: HTTP, leadership, sessions with reconnect backoff, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats.errors
import psycopg
import structlog
from psycopg.rows import TupleRow

from cdc_bridge.bridge.failures import TRANSIENT_ERRORS, start_up_fix
from cdc_bridge.bridge.metrics import Metrics, NoMetrics
from cdc_bridge.bridge.pipeline import UndecodableChange
from cdc_bridge.bridge.session import BridgeState, run_session
from cdc_bridge.bridge.status import BridgeStatus, progress_fields
from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.redaction import redact, redact_dsn
from cdc_bridge.core.wire_text import shown
from cdc_bridge.routing.dead_letters import PoisonRowError
from cdc_bridge.routing.router import Router
from cdc_bridge.sink.connect import (
    NatsConnectError,
    NatsPermissionError,
    nats_address,
    unreachable,
)
from cdc_bridge.sink.publisher import PublishError
from cdc_bridge.source.catalog import slot_lag
from cdc_bridge.source.leadership import Leadership
from cdc_bridge.source.protocol import ProtocolError
from cdc_bridge.source.replication import (
    ReplicationError,
    SlotInUse,
    connection_string,
    server_address,
)

if TYPE_CHECKING:
    from cdc_bridge.bridge.http import HttpEndpoint
    from cdc_bridge.config.model import BridgeConfig

STANDBY_POLL_SECONDS = 1.0  # a standby takes over within about this after the lock frees
# A session up this long that confirmed something (or had nothing to publish) has
# recovered: the reconnect backoff is reset, and `recovered` logged (see has_recovered).
HEALTHY_AFTER_SECONDS = 10.0
# How often a session up that long but with events still unconfirmed is looked at again:
# one with a backlog whose first confirmation is slow still recovers once it confirms.
RECHECK_SECONDS = 1.0

log = structlog.get_logger("cdc_bridge.bridge.supervisor")


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s ... 30 s."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._first


def has_recovered(
    up_for: float, *, alive: bool, confirmed: bool, idle: bool, healthy_after: float
) -> bool:
    """Whether a session counts as recovered: still up after ``healthy_after`` seconds,
    and it either confirmed something (the slot's confirmed position moved) or had
    nothing to publish (nothing failed). Time alone is not enough: a session that dies
    is never recovered, or a loop of sessions failing soon after starting would keep
    resetting the backoff instead of backing off to its cap."""
    return alive and up_for >= healthy_after and (confirmed or idle)


class SessionHealth:
    """What has_recovered is asked about the running session, read from the counters it
    keeps for /status (its live progress and the stats): the supervisor only reads them,
    the session is told nothing."""

    def __init__(self, state: BridgeState, started_at: float, healthy_after: float) -> None:
        self._progress = state.status.progress  # this session's: wired before streaming
        self._stats = state.stats
        self._started_at = started_at
        self._healthy_after = healthy_after
        self._confirmed_at_start = self._progress.confirmed() if self._progress else None
        self._rows_at_start = self._stats.rows
        self.alive = True  # until the session ends, however it ends

    def recovered(self, now: float) -> bool:
        progress, start = self._progress, self._confirmed_at_start
        confirmed = progress is not None and start is not None and progress.confirmed() > start
        in_flight = progress.in_flight() if progress is not None else 0
        idle = in_flight == 0 and self._stats.rows == self._rows_at_start
        return has_recovered(
            now - self._started_at,
            alive=self.alive,
            confirmed=confirmed,
            idle=idle,
            healthy_after=self._healthy_after,
        )


class FailureLog:
    """Log a failure once, repeats at most once a minute, and recovery once."""

    def __init__(self, every: float = 60.0) -> None:
        self._every = every
        self._last_message: str | None = None
        self._last_logged = 0.0
        self._repeats = 0

    def failed(self, message: str, retry_in: float) -> None:
        now = time.monotonic()
        if message != self._last_message or now - self._last_logged >= self._every:
            log.warning(
                "session_failed", error=message, retry_in=round(retry_in, 1), repeats=self._repeats
            )
            self._last_message = message
            self._last_logged = now
            self._repeats = 0
        else:
            self._repeats += 1

    def streaming(self) -> None:
        if self._last_message is not None:
            log.info("recovered", after=self._last_message)
        self._last_message = None
        self._repeats = 0


async def run_bridge(config: BridgeConfig, stop: asyncio.Event) -> int:
    """Serve HTTP, win leadership, supervise sessions until stopped. Returns the exit code."""
    pg = config.postgres
    status = BridgeStatus(slot=pg.slot, stream=config.nats.stream.name, redactor=config.redactor())
    serves_http = config.http.host is not None and config.http.port is not None
    # Metrics are read over HTTP only: without it, keep none (and skip prometheus-client)
    metrics = Metrics() if serves_http else NoMetrics()
    state = BridgeState(status=status, metrics=metrics)
    log.info(
        "starting",
        slot=pg.slot,
        dsn=redact_dsn(pg.dsn),
        servers=[redact_dsn(s) for s in config.nats.servers],
    )
    http: HttpEndpoint | None = None
    if config.http.host is not None and config.http.port is not None:
        from cdc_bridge.bridge.http import HttpEndpoint  # only when HTTP is on

        http = HttpEndpoint(
            config.http.host, config.http.port, status, metrics, config.stall_timeout
        )
        try:
            await http.start()
        except OSError as exc:
            log.error(
                "fatal", error=f"http.listen: cannot listen on {config.http.listen}: {exc.strerror}"
            )
            return 1
    leadership = Leadership(pg.dsn, pg.slot, pg.connect_timeout, password=pg.password)
    progress = asyncio.create_task(log_progress(state, config))
    # One for winning the lock and for the sessions: failures while winning it back
    # (PostgreSQL restarted, say) are recovered from only once a session has, so
    # `recovered` comes after `streaming` whichever server was away.
    failures = FailureLog()
    code: int | None = 1
    try:
        while not stop.is_set():
            if not await become_leader(config, leadership, stop, state, failures):
                break
            code = await lead(config, leadership, stop, state, failures=failures)
            metrics.is_leader.set(0)
            if code is not None:
                return code
        code = 0
        return code
    except FatalError as exc:
        status.failed(str(exc))
        log.error("fatal", error=str(exc))
        code = 1
        return code
    finally:
        progress.cancel()
        stopped_as = status.role
        status.role = "stopped"
        await leadership.release()
        if http is not None:
            await http.close()
        if code == 0:  # every clean exit says so, last, whatever it was doing
            log_stopped(stopped_as, state.stats.stopped_at)


async def become_leader(
    config: BridgeConfig,
    leadership: Leadership,
    stop: asyncio.Event,
    state: BridgeState,
    failures: FailureLog | None = None,
) -> bool:
    """Wait (as standby) until this process holds the slot's lock; False when stopped.
    Raises FatalError for a failure no retry can cure (see give_up). Its failures go
    to ``failures``: lead() logs `recovered` once a session has recovered from them."""
    backoff = Backoff(first=1.0, cap=10.0)
    failures = failures or FailureLog()
    announced = False
    while not stop.is_set():
        try:
            if await leadership.try_acquire():
                state.metrics.is_leader.set(1)
                log.info("leadership_acquired", slot=state.status.slot)
                return True
            delay = STANDBY_POLL_SECONDS
            if not announced:
                log.info(
                    "standby",
                    slot=state.status.slot,
                    reason="another bridge holds this slot's leadership lock; waiting",
                )
                announced = True
            state.status.role = "standby"
        except psycopg.Error as exc:
            if (fatal := give_up(exc, config, state)) is not None:
                raise FatalError(fatal) from None
            delay = backoff.next_delay()
            message = describe(exc, config)
            failures.failed(message, delay)
            state.status.failed(message)
            state.status.role = "connecting"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return False


def _reserved_header_warning() -> Callable[[str], None]:
    """A warning, once per name, for each of the bridge's header names that a row's
    headers column sets: the router leaves them out (a consumer would take them for the
    bridge's own)."""
    warned: set[str] = set()

    def warn(name: str) -> None:
        if name not in warned:
            warned.add(name)
            log.warning(
                "reserved_header_dropped",
                header=shown(name),
                error=f"a row's headers column sets {shown(name)}, a header the bridge "
                "itself sets: it is left out of every message (warned once per name); "
                "rename it in the application",
            )

    return warn


async def lead(
    config: BridgeConfig,
    leadership: Leadership,
    stop: asyncio.Event,
    state: BridgeState,
    *,
    backoff: Backoff | None = None,
    healthy_after: float = HEALTHY_AFTER_SECONDS,
    failures: FailureLog | None = None,
) -> int | None:
    """Run sessions while leader. An exit code ends the process; None: leadership lost.
    ``backoff`` and ``healthy_after`` are the defaults' (tests shorten them); ``failures``
    holds those since the last recovery, winning the lock's included (run_bridge)."""
    router = Router(config, on_reserved_header=_reserved_header_warning())
    backoff = backoff or Backoff()
    failures = failures or FailureLog()
    session_stop = asyncio.Event()
    lost_leadership = asyncio.create_task(leadership.hold())
    forward_stop = asyncio.create_task(stop.wait())

    def end_sessions(_: object) -> None:
        session_stop.set()

    lost_leadership.add_done_callback(end_sessions)
    forward_stop.add_done_callback(end_sessions)

    loop = asyncio.get_running_loop()
    health: SessionHealth | None = None
    check: asyncio.TimerHandle | None = None

    def check_health() -> None:
        nonlocal check
        check = None
        if health is None:
            return
        if health.recovered(loop.time()):
            backoff.reset()
            failures.streaming()
        elif health.alive:
            check = loop.call_later(min(RECHECK_SECONDS, healthy_after), check_health)

    def streaming() -> None:
        # Count it as recovered only once the session has held up for a while and
        # confirmed something (or had nothing to): one that fails right after starting
        # (a poisoned message, say) keeps backing off.
        nonlocal health, check
        state.status.role = "streaming"
        state.has_streamed = True
        health = SessionHealth(state, loop.time(), healthy_after)
        check = loop.call_later(healthy_after, check_health)

    def session_ended() -> None:
        # At once, not when the next session starts: a check left pending through the
        # backoff's wait would find the dead session "up long enough" and reset it.
        nonlocal check
        if health is not None:
            health.alive = False
        if check is not None:
            check.cancel()
            check = None

    try:
        while not session_stop.is_set():
            state.status.role = "connecting"
            try:
                state.stats.stopped_at = None
                await run_session(config, router, session_stop, state, streaming)
                break
            except (FatalError, PoisonRowError, UndecodableChange, ProtocolError) as exc:
                line = fatal_line(exc)
                state.status.failed(line)
                log.error("fatal", error=line)
                return 1
            except SlotInUse as exc:
                delay = backoff.next_delay()
                message = f"{exc} (waiting for it to be released)"
                failures.failed(message, delay)
                state.status.failed(message)  # /readyz's reason while reconnecting
            except TRANSIENT_ERRORS as exc:
                if (fatal := give_up(exc, config, state)) is not None:
                    state.status.failed(fatal)
                    log.error("fatal", error=fatal)
                    return 1
                delay = backoff.next_delay()
                message = describe(exc, config)
                failures.failed(message, delay)
                state.status.failed(message)
                state.metrics.reconnects.labels(failure_target(exc)).inc()
            finally:
                session_ended()  # before any wait: the handlers above never await
            state.status.role = "reconnecting"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session_stop.wait(), delay)
            if not session_stop.is_set() and not await leadership.still_held():
                break  # e.g. PostgreSQL restarted: win the lock again before streaming
    finally:
        session_ended()
        lost_leadership.cancel()
        forward_stop.cancel()
        # Their ends (a cancelled lock check's words among them) before any line after
        await asyncio.gather(lost_leadership, forward_stop, return_exceptions=True)
    if stop.is_set():
        return 0
    log.warning(
        "leadership_lost",
        slot=config.postgres.slot,
        error="the leadership lock session ended; standing by",
    )
    await leadership.release()
    return None


def log_stopped(role: str, stopped_at: int | None) -> None:
    """The `stopped` line of a clean exit, whatever the bridge was doing (streaming,
    reconnecting, standing by): why, and after streaming the position confirmed last."""
    if role == "streaming" and stopped_at is not None:
        log.info("stopped", reason="signal while streaming", lsn=format_lsn(stopped_at))
    else:
        log.info("stopped", reason=f"signal while {role}")


# A replication message the bridge cannot parse: not the data (UndecodableChange says
# which change), the stream itself; something between the bridge and the server.
PROTOCOL_FIX = (
    "fix: make postgres.dsn reach PostgreSQL itself, not a proxy or pooler that changes "
    "the replication protocol; if it does, report it with the server's version"
)


def fatal_line(exc: BaseException) -> str:
    """The `fatal` line of a session's failure no retry can cure: the error's own words,
    which carry their fix (tests/unit/test_fatal_lines.py), or the fix added here."""
    if isinstance(exc, ProtocolError):
        return f"replication protocol: {exc} ({PROTOCOL_FIX})"
    return str(exc)


def failure_target(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error | ReplicationError):
        return "postgres"
    return "nats"


async def log_progress(
    state: BridgeState, config: BridgeConfig, every: float = 30.0, lag_every: float = 5.0
) -> None:
    """A periodic progress line instead of a line per event; refreshes slot lag often."""
    stats = state.stats
    last_rows, last_logged = stats.rows, time.monotonic()
    lag = SlotLagReader(config)
    try:
        while True:
            await asyncio.sleep(lag_every)
            status = state.status
            if status.role == "standby":
                continue
            await lag.refresh(state)
            now = time.monotonic()
            if now - last_logged < every:
                continue
            rate = (stats.rows - last_rows) / (now - last_logged)
            last_rows, last_logged = stats.rows, now
            log.info("progress", **progress_fields(status, stats, rate))
    finally:
        await lag.close()


class SlotLagReader:
    """Measures the slot's lag every few seconds on one connection kept open for it
    (reconnecting after a failure), rather than a new connection each time."""

    def __init__(self, config: BridgeConfig) -> None:
        self._config = config
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None

    async def refresh(self, state: BridgeState) -> None:
        pg = self._config.postgres
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    connection_string(pg.dsn, pg.connect_timeout),
                    autocommit=True,
                    password=pg.password,
                )
            lag = await slot_lag(self._conn, pg.slot)
        except psycopg.Error:
            await self.close()  # lag is a nicety: never let it stop the bridge
            return
        if lag is not None:
            state.status.lag_bytes, state.status.retained_bytes = lag
            state.metrics.lag_bytes.set(lag[0])
            state.metrics.retained_bytes.set(lag[1])

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


# libpq's words before the server's on a refused connection: the address they name is
# the one that refused (of a multi-host DSN), so it replaces the DSN's.
_LIBPQ_PREFIX = re.compile(
    r'^(?:connection failed: )?connection to server (?:at "(?P<host>[^"]+)"(?: \([^)]*\))?'
    r', port (?P<port>\d+)|on socket "(?P<socket>[^"]+)") failed: '
)
_SEVERITY = re.compile(r"^(?:FATAL|ERROR|PANIC):\s+")


def describe(exc: BaseException, config: BridgeConfig) -> str:
    """One line for a failure, naming the server. Drivers' messages may quote a DSN or
    URL: redacted here (and the literal secrets are masked again where the line is
    logged or served)."""
    text = str(exc).strip().splitlines()
    detail = redact(text[0]) if text else ""
    if isinstance(exc, psycopg.Error | ReplicationError):
        where = server_address(config.postgres.dsn)
        if prefix := _LIBPQ_PREFIX.match(detail):
            host, port = prefix["host"], prefix["port"]
            where = prefix["socket"] or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            detail = detail[prefix.end() :]
        return f"PostgreSQL at {where}: {_SEVERITY.sub('', detail) or type(exc).__name__}"
    if isinstance(exc, nats.errors.NoServersError):
        return unreachable(config.nats.servers, None)
    if isinstance(exc, NatsConnectError):
        return detail  # already names every server and why
    # The rest happened on NATS's side (failure_target): a connection lost, an ack or
    # an API answer missing, a refusal. Named by the configured servers' host:port.
    where = f"NATS at {nats_address(config.nats.servers)}"
    if isinstance(exc, NatsPermissionError | PublishError):  # StreamLimitError among them
        return f"{where}: {detail or type(exc).__name__}"  # its own words say what
    what = type(exc).__name__
    return f"{where}: {what}: {detail}" if detail else f"{where}: {what}"


def give_up(exc: BaseException, config: BridgeConfig, state: BridgeState) -> str | None:
    """The fatal line for a failure no retry can cure, while the bridge has never
    streamed; None: retry. Once it has streamed the set-up was right, and a failure like
    a refused password is a change in progress (a rotation): retried, and logged."""
    if state.has_streamed:
        return None
    fix = start_up_fix(exc, config)
    return None if fix is None else f"{describe(exc, config)} (fix: {fix})"


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
