"""Where a result was measured: saved with every run, because figures from different
machines (or a busy one) are not comparable."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench.children import REPO_ROOT
from cdc_bridge import build


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _git_revision() -> str:
    """The commit measured, ``+dirty`` when cdc_bridge/ (the code measured) had changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "cdc_bridge"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def describe_machine(*, postgres_version: str, nats_version: str) -> dict[str, object]:
    load1, load5, _ = os.getloadavg()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": postgres_version,
        "nats_server": nats_version,
        "git_revision": _git_revision(),
        "cdc_bridge_build": build(),  # compiled (mypyc) or pure Python: the bridges run the same
        "loadavg_at_start": [round(load1, 2), round(load5, 2)],
    }
