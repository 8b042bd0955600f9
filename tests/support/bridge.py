"""Run the bridge daemon as a real subprocess and watch what it logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from cdc_bridge.dev.processes import Service

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_PLACEHOLDER = "{config}"
DEFAULT_COMMAND: tuple[str, ...] = (
    sys.executable,
    "-m",
    "cdc_bridge",
    "run",
    "--config",
    CONFIG_PLACEHOLDER,
    "--log-format",
    "json",
)
_TAIL_LINES = 30

LineMatch = str | Callable[[str], bool]


def log_event(event: str, **fields: object) -> Callable[[str], bool]:
    """A matcher for ``wait_for_log``: a JSON log line whose ``event`` (and ``fields``) match."""

    def matches(line: str) -> bool:
        record = parse_json_line(line)
        if record is None or record.get("event") != event:
            return False
        return all(record.get(key) == value for key, value in fields.items())

    return matches


def parse_json_line(line: str) -> dict[str, Any] | None:
    """The line as a JSON object, or None if it is not one (tracebacks, plain prints)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class BridgeProcess(Service):
    """``python -m cdc_bridge run --config FILE --log-format json`` with captured output.

    ``config`` is written as YAML to ``work_dir/bridge.yaml`` on ``start()``. ``command``
    replaces the default argv; any ``{config}`` in it becomes the config file's path. Output
    lines of both streams are collected by reader threads in arrival order in ``lines``.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        work_dir: Path,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.work_dir = Path(work_dir)
        self.config_path = self.work_dir / "bridge.yaml"
        template = [*(command if command is not None else DEFAULT_COMMAND), *extra_args]
        config_file = str(self.config_path)
        self.command = [part.replace(CONFIG_PLACEHOLDER, config_file) for part in template]
        self.env = {
            **os.environ,
            # The repo may not be pip-installed: make `-m cdc_bridge` importable anyway
            "PYTHONPATH": os.pathsep.join(
                part for part in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if part
            ),
            "PYTHONUNBUFFERED": "1",  # lines as they happen, not when a buffer fills
            **(env or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._lines: list[str] = []
        self._stdout_lines: list[str] = []
        self._stderr_lines: list[str] = []
        self._changed = threading.Condition()

    # -- output --

    @property
    def lines(self) -> list[str]:
        """Every line so far from stdout and stderr, in the order they were read."""
        with self._changed:
            return list(self._lines)

    @property
    def stdout_lines(self) -> list[str]:
        with self._changed:
            return list(self._stdout_lines)

    @property
    def stderr_lines(self) -> list[str]:
        with self._changed:
            return list(self._stderr_lines)

    def json_records(self) -> list[dict[str, Any]]:
        """The lines that are JSON objects (structlog's records), parsed."""
        return [record for line in self.lines if (record := parse_json_line(line)) is not None]

    def mark(self) -> int:
        """How many lines there are now: pass as ``since`` to wait only for newer ones."""
        with self._changed:
            return len(self._lines)

    def wait_for_log(self, match: LineMatch, timeout: float = 10.0, *, since: int = 0) -> str:
        """The first line (from index ``since``) containing ``match`` or satisfying it.

        Fails at once, not at the deadline, when the process has exited and all its output
        has been read without a match.
        """
        matches = (lambda line: match in line) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        checked = since
        with self._changed:
            while True:
                for line in self._lines[checked:]:
                    if matches(line):
                        return line
                checked = max(checked, len(self._lines))
                if self._started and self._output_finished():
                    raise AssertionError(self._describe(f"exited without logging {match!r}"))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        self._describe(f"no log line {match!r} within {timeout:g}s")
                    )
                self._changed.wait(min(remaining, 0.5))

    def http_url(self, timeout: float = 30.0) -> str:
        """``http://host:port`` of the bridge's HTTP endpoint, read from its JSON
        ``http_listening`` line (the real port when the config asked for port 0).

        A wildcard listen address (0.0.0.0, ::) is reached through loopback.
        """
        line = self.wait_for_log(log_event("http_listening"), timeout=timeout)
        record = parse_json_line(line)
        assert record is not None  # log_event matched it, so it parsed
        host, _, port = str(record["address"]).rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"  # an IPv6 literal in a URL
        return f"http://{host}:{port}"

    # -- lifecycle --

    @property
    def pid(self) -> int:
        return self._require_process().pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("BridgeProcess.start() called twice")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        # Several bridges may run at once (standby tests) and the machine's 8080 may be
        # taken: unless a test chooses, each bridge's HTTP endpoint gets a free port.
        config.setdefault("http", {"listen": "127.0.0.1:0"})
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=self.env,
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        for stream, own_lines in (
            (self._process.stdout, self._stdout_lines),
            (self._process.stderr, self._stderr_lines),
        ):
            reader = threading.Thread(
                target=self._read_lines,
                args=(stream, own_lines),
                daemon=True,
                name=f"bridge-{self._process.pid}-reader",
            )
            reader.start()
            self._readers.append(reader)

    def send_signal(self, signum: int) -> None:
        self._require_process().send_signal(signum)

    def wait_for_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end on its own; its exit code."""
        process = self._require_process()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(self._describe(f"still running after {timeout:g}s")) from None
        self._join_readers()
        return code

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (a clean shutdown), wait for it; the exit code. Killed if it hangs."""
        process = self._require_process()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return self.wait_for_exit(timeout)
        except AssertionError:
            self.kill()
            raise

    def kill(self) -> int:
        """SIGKILL: no shutdown work at all. The exit code (negative: -9)."""
        process = self._require_process()
        if process.poll() is None:
            process.kill()
        code = process.wait()
        self._join_readers()
        return code

    def close(self) -> None:
        """Kill it if still running (fixture teardown): never leave a daemon behind."""
        if self._process is not None and self._process.poll() is None:
            self.kill()

    # -- internals --

    @property
    def _started(self) -> bool:
        return self._process is not None

    def _output_finished(self) -> bool:
        return self.returncode is not None and not any(r.is_alive() for r in self._readers)

    def _read_lines(self, stream: IO[bytes], own_lines: list[str]) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._changed:
                    own_lines.append(line)
                    self._lines.append(line)
                    self._changed.notify_all()
        finally:
            stream.close()
            with self._changed:
                self._changed.notify_all()  # let wait_for_log notice the end of output

    def _join_readers(self, timeout: float = 5.0) -> None:
        # A grandchild holding the pipe open would keep a reader alive: don't hang on it
        for reader in self._readers:
            reader.join(timeout)

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("BridgeProcess not started")
        return self._process

    def _describe(self, problem: str) -> str:
        tail = "\n".join(self.lines[-_TAIL_LINES:])  # the condition's lock is re-entrant
        return (
            f"bridge (pid {self._process.pid if self._process else '-'}, "
            f"exit code {self.returncode}) {problem}; last output:\n{tail}"
        )


# make_bridge (tests/conftest.py): a config in, a started BridgeProcess out
MakeBridge = Callable[..., BridgeProcess]
STARTUP_TIMEOUT = 30.0  # a cold Python start plus both connections on a busy 2-core box


def start_bridge(make_bridge: MakeBridge, config: dict[str, Any]) -> BridgeProcess:
    """A bridge that is streaming: its slot exists, so every commit from now on arrives."""
    bridge = make_bridge(config)
    bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
    return bridge


def run_cli(config_path: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """``cdc-bridge <args> --config <config_path>`` as a separate process, as an operator
    runs it; its output as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cdc_bridge", *args, "--config", str(config_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env, check=False,
    )  # fmt: skip
