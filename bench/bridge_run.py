"""The bridge under test: ``cdc-bridge run`` as a child process with a config of our own.

Its routes match the baselines' ``workload.subject_for``; everything else is the
documented default (max_in_flight 4096, file storage, 2 min dedupe window), except that
HTTP is off (no port to find) and logs are warnings only (a log line per event would
be a bug, and the progress lines are not what we measure).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.children import REPO_ROOT, ChildProcess
from bench.cpu import CpuUse, cpu_use
from bench.workload import OUTBOX_TABLE

STREAM = "BENCH"
SUBJECT_PREFIX = "bench"
_STOP_TIMEOUT = 30.0


def bridge_config(*, dsn: str, nats_url: str, slot: str, publication: str) -> dict[str, Any]:
    return {
        "postgres": {"dsn": dsn, "slot": slot, "publication": publication, "plugin": "pgoutput"},
        "nats": {
            "servers": [nats_url],
            "stream": {"name": STREAM, "subjects": [f"{SUBJECT_PREFIX}.>"]},
        },
        "outbox": {"table": OUTBOX_TABLE},
        "routes": [
            {
                "name": "tickets",
                "when": {"aggregate_type": "ticket"},
                "subject": f"{SUBJECT_PREFIX}.ticket.{{event_type}}",
            },
            {"name": "other", "subject": f"{SUBJECT_PREFIX}.other.{{aggregate_type}}"},
        ],
        "dead_letter": {"subject": f"{SUBJECT_PREFIX}.dlq"},
        "logging": {"format": "json", "level": "warning"},
        "http": {"listen": None},
    }


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmHWM = peak resident set, VmRSS = now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"/proc/{pid}/status has no {field}")


class BridgeUnderTest(ChildProcess):
    """``python -m cdc_bridge run --config FILE`` (what the ``cdc-bridge`` script runs)."""

    def __init__(
        self,
        config: dict[str, Any],
        work_dir: Path,
        name: str = "bridge",
        source_root: Path = REPO_ROOT,
    ) -> None:
        self.config_path = work_dir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        command = [sys.executable, "-m", "cdc_bridge", "run", "--config", str(self.config_path)]
        super().__init__(command, work_dir, name, source_root)

    def peak_rss_kib(self) -> int:
        """The bridge's peak resident set so far (VmHWM): read it while it still runs."""
        self.check_alive()
        return proc_status_kib(self.pid, "VmHWM")

    def cpu_use(self) -> CpuUse | None:
        """CPU the bridge has had since it started, and time it waited for one."""
        self.check_alive()
        return cpu_use(self.pid)

    def stop(self) -> int:
        """SIGTERM (a clean shutdown: acks awaited, slot confirmed); its exit code."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()
        return process.returncode
