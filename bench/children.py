"""Relays and the producer run as child processes, so each has a core and an event loop of
its own, as it would in production, and the parent's subscriber does not share their CPU.

A child is ``python -m bench.<module> ... --result FILE``: it writes its JSON result to FILE
and its output to a log beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
_POLL_INTERVAL = 0.02


class ChildFailed(Exception):
    """A child exited with an error, or without writing its result."""


def child_environment(source_root: Path = REPO_ROOT) -> dict[str, str]:
    """Our environment with the repository (or another checkout of it) importable first:
    it need not be pip-installed."""
    path = os.pathsep.join(p for p in (str(source_root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def log_tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join([line for line in text.splitlines() if line.strip()][-lines:])


class ChildProcess:
    """One child process with its output in ``<work_dir>/<name>.log``; ``spawned_at`` is
    Unix time just before the fork. ``source_root`` is the checkout whose code it runs."""

    def __init__(
        self, command: Sequence[str], work_dir: Path, name: str, source_root: Path = REPO_ROOT
    ) -> None:
        self.name = name
        self.source_root = source_root
        self.log_path = work_dir / f"{name}.log"
        self.command = list(command)
        self.spawned_at = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.spawned_at = time.time()
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.source_root,
            env=child_environment(self.source_root),
        )

    def check_alive(self) -> None:
        """Raise ChildFailed if the process has already exited (with any code)."""
        assert self._process is not None, "not started"
        code = self._process.poll()
        if code is not None:
            raise ChildFailed(
                f"{self.name} exited early with code {code}: {log_tail(self.log_path)}"
            )

    def kill(self) -> None:
        """For cleanup paths: make sure nothing is left running."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Child(ChildProcess):
    """``python -m <module> ... --result FILE``: a relay or the producer."""

    def __init__(self, module: str, args: Sequence[str], work_dir: Path, name: str) -> None:
        self.result_path = work_dir / f"{name}.json"
        command = [sys.executable, "-m", module, *args, "--result", str(self.result_path)]
        super().__init__(command, work_dir, name)

    def terminate(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the child to signal (``mark_ready``) that it is connected and working."""
        deadline = time.monotonic() + timeout
        while not ready_path(self.result_path).exists():
            self.check_alive()
            if time.monotonic() >= deadline:
                raise ChildFailed(f"{self.name} not ready within {timeout:g}s")
            await asyncio.sleep(_POLL_INTERVAL)

    async def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the exit (killing it at the deadline); its JSON result."""
        process = self._process
        assert process is not None, "not started"
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() >= deadline:
                process.kill()
                process.wait()
                self._close_log()
                raise ChildFailed(f"{self.name} did not finish within {timeout:g}s")
            await asyncio.sleep(_POLL_INTERVAL)
        self._close_log()
        if process.returncode != 0:
            raise ChildFailed(
                f"{self.name} exited with code {process.returncode}: {log_tail(self.log_path)}"
            )
        try:
            loaded: dict[str, Any] = json.loads(self.result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ChildFailed(f"{self.name} left no readable result: {exc}") from None
        return loaded


def ready_path(result_path: Path | str) -> Path:
    return Path(result_path).with_suffix(".ready")


def mark_ready(result_path: str) -> None:
    """Tell the parent we are connected: it may start timing now."""
    ready_path(result_path).touch()


def write_result(path: str, result: dict[str, Any]) -> None:
    """A child's last act: its result, written whole (a reader never sees half a file)."""
    target = Path(path)
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(result), encoding="utf-8")
    partial.replace(target)
