"""Scenario: a reader of the stream's tail never sees half a transaction (atomic mode).

A watcher asks JetStream for the last message of the bridge's subject space as fast as it
can while transactions of 1 to 300 events are published, across a kill -9 of the bridge
and a kill -9 and restart of nats-server. Each distinct tail it sees (a sequence) is a
view; a view whose last message lacks ``Cdc-Tx-Last: true`` ends inside a transaction.
In atomic mode every transaction is stored whole, so no view may be half; message by
message, many are (the figure printed for per-message mode is the "before").
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client as NatsClient
from support.bridge import BridgeProcess
from support.chaos import Auditor, BridgeRunner, LoadGenerator, chaos_bridge_config

from cdc_bridge.dev.nats_server import NatsServer

MAX_ROWS_PER_TXN = 300
ROWS_PER_SECOND = 2_000.0
NATS_OUTAGE = 2.0
MIN_VIEWS = 50


@dataclass(frozen=True, slots=True)
class TailView:
    """One distinct tail of the stream as the watcher saw it."""

    seq: int
    lsn: str  # Cdc-Lsn of the last message
    tx_last: bool  # it carries Cdc-Tx-Last: true: the tail ends on a transaction's end


class TailWatcher:
    """A thread with its own event loop that reads the stream's last message on
    ``subjects`` back to back (``$JS.API.STREAM.MSG.GET`` with ``last_by_subj``) and keeps
    each distinct view. It rides out nats-server going away: requests fail, the client
    reconnects, the watching goes on."""

    def __init__(self, url: str, stream: str, subjects: str) -> None:
        self._url = url
        self._api = f"$JS.API.STREAM.MSG.GET.{stream}"
        self._request = json.dumps({"last_by_subj": subjects}).encode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tail-watcher", daemon=True)
        self.views: list[TailView] = []
        self.polls = 0
        self.failed_polls = 0  # no answer (server down, reconnecting) or an error answer
        self.connection_errors = 0
        self.failure: BaseException | None = None

    @property
    def half_views(self) -> list[TailView]:
        return [view for view in self.views if not view.tx_last]

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop watching (idempotent; for teardown, when the test failed early too)."""
        self._stop.set()
        self._thread.join(15)

    def stop(self) -> None:
        self.close()
        assert not self._thread.is_alive(), "the tail watcher did not stop"
        if self.failure is not None:
            raise AssertionError(f"the tail watcher failed: {self.failure!r}") from self.failure

    def _run(self) -> None:
        try:
            asyncio.run(self._watch())
        except BaseException as exc:  # re-raised by stop() in the test thread
            self.failure = exc

    async def _watch(self) -> None:
        nc = await nats.connect(
            self._url,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
            error_cb=self._connection_error,
        )
        try:
            last_seq = 0
            while not self._stop.is_set():
                self.polls += 1
                view = await self._poll(nc)
                if view is None:
                    self.failed_polls += 1
                    await asyncio.sleep(0.02)  # down or reconnecting: don't spin
                elif view.seq != last_seq:
                    last_seq = view.seq
                    self.views.append(view)
        finally:
            await nc.close()

    async def _connection_error(self, error: Exception) -> None:
        """Expected while nats-server is down: counted, not logged (the default logs each
        failed reconnect with its traceback)."""
        self.connection_errors += 1

    async def _poll(self, nc: NatsClient) -> TailView | None:
        try:
            reply = await nc.request(self._api, self._request, timeout=1.0)
        except (nats.errors.Error, TimeoutError):
            return None
        answer = json.loads(reply.data)
        message = answer.get("message")
        if message is None:  # {"error": ...}: no message yet, JetStream not ready
            return None
        headers = _parse_headers(base64.b64decode(message.get("hdrs", "")))
        return TailView(
            seq=int(message["seq"]),
            lsn=headers.get("Cdc-Lsn", ""),
            tx_last=headers.get("Cdc-Tx-Last") == "true",
        )


def _parse_headers(raw: bytes) -> dict[str, str]:
    """``NATS/1.0\\r\\nName: value\\r\\n...`` -> {name: value} (the first of each name)."""
    headers: dict[str, str] = {}
    for line in raw.decode().split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip(), value.strip())
    return headers


@pytest.mark.parametrize(
    ("rows_between_faults", "atomic"),
    [
        pytest.param(5_000, True, id="short"),
        # The "before": message by message a reader of the tail sees half transactions.
        pytest.param(5_000, False, id="per-message", marks=pytest.mark.slow),
        pytest.param(20_000, True, id="long", marks=pytest.mark.slow),
    ],
)
def test_tail_never_shows_half_a_transaction(
    chaos_dsn: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    rows_between_faults: int,
    atomic: bool,
) -> None:
    nats_server = isolated_nats_server
    stream = unique_name.upper()
    config = chaos_bridge_config(
        dsn=chaos_dsn, nats_url=nats_server.url, name=unique_name, atomic=atomic
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()  # creates the stream the watcher reads
    watcher = TailWatcher(nats_server.url, stream, f"{unique_name}.>")
    watcher.start()
    try:
        _run_scenario(
            chaos_dsn, nats_server, bridge, watcher, chaos_seed, rows_between_faults, atomic
        )
    finally:
        watcher.close()


def _run_scenario(
    chaos_dsn: str,
    nats_server: NatsServer,
    bridge: BridgeRunner,
    watcher: TailWatcher,
    chaos_seed: int,
    rows_between_faults: int,
    atomic: bool,
) -> None:
    stream = str(bridge.config["nats"]["stream"]["name"])
    load = LoadGenerator(
        chaos_dsn,
        rows_per_second=ROWS_PER_SECOND,
        max_rows_per_txn=MAX_ROWS_PER_TXN,
        seed=chaos_seed,
    )
    load.start()
    started = time.monotonic()
    try:
        load.wait_for_rows(rows_between_faults, timeout=60 + rows_between_faults / 100)
        views_at = [len(watcher.views)]
        bridge.kill()
        bridge.start()
        load.wait_for_rows(rows_between_faults, timeout=60 + rows_between_faults / 100)
        mark = bridge.current.mark()
        nats_server.kill()
        time.sleep(NATS_OUTAGE)  # the fault itself: load goes on while NATS is away
        views_at.append(len(watcher.views))
        nats_server.start()  # same port, same store
        bridge.wait_streaming(since=mark, timeout=60)
        load.wait_for_rows(rows_between_faults, timeout=60 + rows_between_faults / 100)
    finally:
        report = load.stop()
    result = Auditor(chaos_dsn, nats_server.url, stream).audit("whole transactions at the tail")
    # The audit waited for the bridge to catch up: the watcher has seen the final tail too
    watcher.stop()
    half = watcher.half_views
    views_at.append(len(watcher.views))
    before_kill, before_restart, total = views_at
    mode = "atomic" if atomic else "per-message"
    print(report.summary())
    print(result.summary())
    print(
        f"tail watcher ({mode}): {len(watcher.views)} distinct views, {len(half)} half "
        f"transactions, {watcher.polls} polls ({watcher.failed_polls} unanswered, "
        f"{watcher.connection_errors} connection errors), "
        f"{report.rows_committed} rows in {report.transactions} txs, "
        f"{time.monotonic() - started:.1f}s; views before the bridge kill {before_kill}, "
        f"then until the nats-server kill {before_restart - before_kill}, "
        f"after its restart {total - before_restart}"
    )
    Auditor.assert_clean(result, bridge.notable_lines())
    assert len(watcher.views) > MIN_VIEWS, f"only {len(watcher.views)} views of the tail"
    assert total > before_restart, "the watcher saw nothing after the nats-server restart"
    if atomic:
        assert not half, (
            f"{len(half)} views ended inside a transaction, e.g. "
            + ", ".join(f"seq {v.seq} Cdc-Lsn {v.lsn}" for v in half[:5])
            + "\n"
            + bridge.notable_lines()
        )
