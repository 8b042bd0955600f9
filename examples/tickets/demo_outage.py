"""The failure the outbox pattern exists for: NATS goes away, the service does not care.

    python examples/tickets/demo_outage.py

starts a throwaway PostgreSQL and nats-server (cdc_bridge.dev.devstack), ``cdc-bridge init``
and ``cdc-bridge run`` with bridge.yaml, the ticket service and the consumer, then:

1. creates and updates a few tickets, and waits until the consumer's copy matches;
2. stops NATS, and keeps creating and updating tickets: every request succeeds, because
   each one only commits a ticket row and its outbox row to PostgreSQL;
3. starts NATS again, and waits until the consumer's copy equals the service's tickets:
   the bridge publishes what piled up in the WAL, the consumer catches up, nothing lost.

Exit status 0 when the copy caught up, 1 when it did not. Every process's output is kept
in the work folder (--dir; a temporary one, removed afterwards, by default).
tests/integration/test_example_tickets.py runs the same ``run_scenario`` on the test
suite's servers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import psycopg

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only

Tickets = dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class OutageReport:
    service_tickets: Tickets  # what the service holds, by id
    consumer_tickets: Tickets  # what the consumer's copy holds, by id
    writes_during_outage: int  # creates and updates that succeeded while NATS was down
    behind_during_outage: bool  # the copy lacked tickets while NATS was down

    @property
    def in_sync(self) -> bool:
        return self.service_tickets == self.consumer_tickets


class Process:
    """A child process whose output goes to a log file, searched by ``wait_for``."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": _python_path(), "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
            )

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first line of output containing ``text``; fails at the deadline or exit."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self._popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not print {text!r}; see {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.1)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()


def run_scenario(
    *,
    dsn: str,
    copy_dsn: str,
    nats_url: str,
    stop_nats: Callable[[], None],
    start_nats: Callable[[], None],
    work_dir: Path,
    before: int = 5,
    during: int = 20,
    timeout: float = 60.0,
    say: Callable[[str], None] = print,
) -> OutageReport:
    """Service and consumer up, tickets before/while/after NATS is down. The service
    writes to ``dsn``; the consumer keeps its copy in ``copy_dsn`` (another database).

    The bridge must already be streaming from a slot created before the first ticket
    (cdc-bridge init, or a running bridge): events committed before the slot existed
    are not in it.
    """
    service = Process(
        "service",
        [
            sys.executable,
            str(HERE / "service.py"),
            "--dsn",
            dsn,
            "--listen",
            "127.0.0.1:0",
            "--init",
        ],
        work_dir / "service.log",
    )
    consumer = Process(
        "consumer",
        [sys.executable, str(HERE / "consumer.py"), "--nats", nats_url, "--dsn", copy_dsn],
        work_dir / "consumer.log",
    )
    try:
        url = service.wait_for("listening on ").rsplit(" ", 1)[-1]
        say(f"service: {url}")

        first = [_create(url, f"Ticket {n}") for n in range(1, before + 1)]
        if first:
            _update(url, first[0]["id"], {"status": "in_progress"})
        _wait_in_sync(url, copy_dsn, timeout)
        say(f"1. {before} tickets created, the consumer's copy matches")

        stop_nats()
        say("2. NATS stopped; the service goes on:")
        writes = 0
        for n in range(before + 1, before + during + 1):
            ticket = _create(url, f"Ticket {n} (NATS down)")
            writes += 1
            if n % 2 == 0:
                _update(url, ticket["id"], {"status": "closed", "title": f"Ticket {n}, done"})
                writes += 1
        service_now = _service_tickets(url)
        behind = read_copy(copy_dsn) != service_now
        say(
            f"   {writes} requests, all succeeded; the service has {len(service_now)} tickets,"
            f" the consumer's copy {len(read_copy(copy_dsn))}"
        )

        start_nats()
        say("3. NATS started; waiting for the consumer to catch up ...")
        service_tickets, consumer_tickets = _wait_in_sync(url, copy_dsn, timeout)
        say(f"   the copy equals the service: {len(consumer_tickets)} tickets, nothing lost")
        return OutageReport(service_tickets, consumer_tickets, writes, behind)
    finally:
        consumer.stop()
        service.stop()


def read_copy(dsn: str) -> Tickets:
    """The consumer's tickets by id, read from its database while it runs."""
    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute("SELECT id, title, status, version FROM tickets").fetchall()
        except psycopg.errors.UndefinedTable:  # the consumer has not created it yet
            return {}
    return {
        row[0]: {"id": row[0], "title": row[1], "status": row[2], "version": row[3]} for row in rows
    }


def _wait_in_sync(url: str, copy_dsn: str, timeout: float) -> tuple[Tickets, Tickets]:
    deadline = time.monotonic() + timeout
    while True:
        service_tickets = _service_tickets(url)
        copy = read_copy(copy_dsn)
        if copy == service_tickets:
            return service_tickets, copy
        if time.monotonic() > deadline:
            missing = sorted(set(service_tickets) - set(copy))
            stale = sorted(i for i in copy if copy[i] != service_tickets.get(i))
            raise RuntimeError(
                f"the consumer's copy is not in sync after {timeout:g}s: missing "
                f"{missing[:10]}, different {stale[:10]}"
            )
        time.sleep(0.2)


def _service_tickets(url: str) -> Tickets:
    tickets = _request("GET", f"{url}/tickets", None, expect=200)
    assert isinstance(tickets, list)
    return {ticket["id"]: ticket for ticket in tickets}


def _create(url: str, title: str) -> dict[str, Any]:
    created = _request("POST", f"{url}/tickets", {"title": title}, expect=201)
    assert isinstance(created, dict)
    return created


def _update(url: str, ticket_id: str, changes: dict[str, Any]) -> None:
    _request("PATCH", f"{url}/tickets/{ticket_id}", changes, expect=200)


def _request(method: str, url: str, body: object, *, expect: int) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            status, text = response.status, response.read()
    except HTTPError as exc:
        status, text = exc.code, exc.read()
    if status != expect:
        raise RuntimeError(f"{method} {url}: {status} {text.decode(errors='replace')}")
    return json.loads(text)


def _python_path() -> str:
    # The repository may not be pip-installed: make cdc_bridge importable anyway.
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", help="keep servers and logs here (default: temporary)")
    parser.add_argument("--before", type=int, default=5, help="tickets before the outage")
    parser.add_argument("--during", type=int, default=20, help="tickets during the outage")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from cdc_bridge.dev.devstack import DevStack

    work_dir = Path(args.dir or tempfile.mkdtemp(prefix="tickets-demo-")).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir.chmod(0o755)  # PostgreSQL runs as the postgres account when we are root
    stack = DevStack(work_dir / "stack")
    bridge: Process | None = None
    try:
        print(f"starting PostgreSQL and nats-server under {work_dir} ...", flush=True)
        stack.start()
        dsn = stack.postgres.create_database("tickets")
        copy_dsn = stack.postgres.create_database("tickets_copy", outbox_schema=False)
        os.environ.update({"TICKETS_DSN": dsn, "NATS_URL": stack.nats.url})
        config = str(HERE / "bridge.yaml")
        # Slot, publication and stream before the first ticket: nothing can be missed.
        subprocess.run(
            [sys.executable, "-m", "cdc_bridge", "init", "--config", config],
            check=True,
            env={**os.environ, "PYTHONPATH": _python_path()},
            cwd=REPO_ROOT,
        )
        bridge = Process(
            "cdc-bridge",
            [
                sys.executable,
                "-m",
                "cdc_bridge",
                "run",
                "--config",
                config,
                "--log-format",
                "console",
            ],
            work_dir / "bridge.log",
        )
        bridge.wait_for("streaming")
        report = run_scenario(
            dsn=dsn,
            copy_dsn=copy_dsn,
            nats_url=stack.nats.url,
            stop_nats=stack.nats.stop,
            start_nats=stack.nats.start,
            work_dir=work_dir,
            before=args.before,
            during=args.during,
        )
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if bridge is not None:
            bridge.stop()
        stack.close()
        if args.dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if report.in_sync else 1


if __name__ == "__main__":
    sys.exit(main())
