"""Server processes for the throwaway stack: start in their own session, wait for a
condition with a deadline, stop in order, kill the whole process group."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

START_TIMEOUT = 60.0  # initdb + first start on a busy 2-core machine


STOP_TIMEOUT = 30.0


POLL_INTERVAL = 0.05


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def dies_with_parent(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``signum`` to the child when the thread
    that started it dies, however it dies (kill -9 of a test run or of ``cdc-bridge
    dev`` included), so no throwaway server outlives its owner. Linux only: None
    elsewhere. ``subprocess`` calls it after switching user (a change of credentials
    clears the setting), just before exec; start servers from a thread that lives as
    long as they do (the main thread, here)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_parent_death_signal() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")

    return set_parent_death_signal


class Service:
    """Something started and closed, usable as ``with Thing(...) as thing:``.

    ``close`` runs on leaving the block, and also when ``start`` fails half-way, so a
    server that started before the failure is never left running.
    """

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class DevstackError(Exception):
    """A throwaway server could not be found, started or stopped. The message is one line."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess(Service):
    """A server run as a child process, its output in ``log_path``: what PostgresServer
    and NatsServer share (state, stopping, killing)."""

    log_path: Path
    _process: subprocess.Popen[bytes] | None
    _log_file: IO[bytes] | None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's (for PostgreSQL: the postmaster's) pid while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def kill(self) -> None:
        """SIGKILL the server's process group: a crash, as after a power cut, with no
        shutdown work at all. PostgreSQL's backends go too: left alive they would keep
        their shared memory attached and the next start would refuse to run beside them.
        nats-server's written messages survive (they are in the OS)."""
        if self._process is None:
            return
        kill_group(self._process)
        self._forget_process()

    def _stop_with(self, signum: int, what: str) -> None:
        """Send ``signum``, wait for the exit; DevstackError naming ``what`` if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise DevstackError(
                    f"{what} did not stop within {STOP_TIMEOUT:.0f}s; log {self.log_path}: "
                    f"{log_tail(self.log_path)}"
                ) from None
        self._forget_process()

    def _forget_process(self) -> None:
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def require_port_free(port: int, what: str) -> None:
    # Without this, a server that fails to bind would look "ready" because *another* server
    # answers on that port: the machine's own PostgreSQL or NATS, which we must never touch.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise DevstackError(f"{what}: port {port} on 127.0.0.1 is already in use") from None
            raise


def log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(empty log)"


def wait_for(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    *,
    timeout: float,
    what: str,
    log_path: Path,
) -> None:
    """Poll ``ready`` until it holds; fail early if the process dies, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise DevstackError(
                f"{what} exited with code {code} while starting; log {log_path}: "
                f"{log_tail(log_path)}"
            )
        if ready():
            return
        if time.monotonic() >= deadline:
            raise DevstackError(
                f"{what} did not become ready within {timeout:.0f}s; log {log_path}: "
                f"{log_tail(log_path)}"
            )
        time.sleep(POLL_INTERVAL)


def live_group_members(pgid: int) -> bool:
    """Whether any not-yet-dead process is left in the process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        state, group = fields[0], int(fields[2])
        # Zombies count as gone: when we are PID 1's child in a container, nobody may reap them
        if group == pgid and state not in ("Z", "X"):
            return True
    return False


def kill_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGKILL a server started with start_new_session (its pgid is its pid) and its children."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout)
    deadline = time.monotonic() + timeout
    while live_group_members(process.pid):
        if time.monotonic() >= deadline:
            raise DevstackError(f"processes of group {process.pid} survived SIGKILL")
        time.sleep(POLL_INTERVAL)
