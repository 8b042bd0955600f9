"""How much CPU a process got, and how long it sat runnable waiting for one.

On a shared 2-core machine the second number matters as much as the first: a relay
that waited on the run queue for most of its drain measured the machine's other jobs,
not itself. Both come from the scheduler's own accounting (/proc/<pid>/task/*/schedstat:
nanoseconds on a CPU, nanoseconds runnable but waiting), summed over the threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CpuUse:
    on_cpu_seconds: float  # user + system, imports and start-up included
    runqueue_wait_seconds: float  # runnable, but another process had the CPU


def cpu_use(pid: int | None = None) -> CpuUse | None:
    """Totals since ``pid`` (default: this process) started; None where Linux does not say."""
    tasks = Path(f"/proc/{pid if pid is not None else 'self'}/task")
    on_cpu = waiting = 0
    try:
        for task in tasks.iterdir():
            try:
                fields = (task / "schedstat").read_text().split()
            except FileNotFoundError:
                continue  # a thread that ended while we looked
            on_cpu += int(fields[0])
            waiting += int(fields[1])
    except OSError:
        return None
    return CpuUse(on_cpu / 1e9, waiting / 1e9)
