"""Optional (``--profile DIR``): sample the bridge with py-spy while it drains the backlog.

py-spy reads the process from outside (``--nonblocking``: without pausing it), so the
bridge runs unmodified; sampling still costs some CPU on a 2-core machine, so a profiled
run's figures are marked as such and are not history material. The raw output is
collapsed stacks ("frame;frame;frame count"), which ``top_functions`` ranks by samples
spent in each function itself (self) and below it (total).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_STOP_TIMEOUT = 30.0


def py_spy_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("py-spy")


class PySpyRecorder:
    """``py-spy record`` attached to ``pid`` until ``stop()``; output in ``out_dir``."""

    def __init__(
        self, pid: int, out_dir: Path, name: str, rate: int = 250, native: bool = False
    ) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.collapsed_path = out_dir / f"{name}.collapsed.txt"
        self.log_path = out_dir / f"{name}.py-spy.log"
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                # --native names the mypyc-compiled functions (otherwise their samples
                # count as their Python caller's own), but it pauses the process for
                # each sample: more skew than --nonblocking.
                "--native" if native else "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(self.collapsed_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> Path:
        """Stop sampling (SIGINT makes py-spy write its output); the collapsed stacks."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        return self.collapsed_path


@dataclass(frozen=True, slots=True)
class FunctionCost:
    function: str  # "name (file)"
    self_pct: float  # of all samples, spent in this function itself
    total_pct: float  # of all samples, spent in it or anything it called


def _frame_name(frame: str) -> str:
    """``handle (cdc_bridge/sink/publisher.py:120)`` -> ``handle (sink/publisher.py)``."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = Path(match["file"])
    return f"{match['function']} ({path.parent.name}/{path.name})"


# CPython's reference counting helpers, inlined into compiled code: a native sample that
# ends in one of them belongs to the function that called it.
_INLINED = frozenset(("Py_DECREF", "Py_INCREF", "Py_XDECREF", "Py_XINCREF", "_Py_DECREF"))


def _leaf_owner(frames: list[str]) -> list[str]:
    """``frames`` without the inlined helpers at the leaf end (see _INLINED)."""
    while len(frames) > 1 and frames[-1].split(" (", 1)[0] in _INLINED:
        frames = frames[:-1]
    return frames


def top_functions(collapsed: Path, limit: int = 15) -> list[FunctionCost]:
    self_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _leaf_owner([_frame_name(f) for f in stack.split(";") if "(" in f])
        if not frames:
            continue
        samples += count
        self_samples[frames[-1]] += count
        for name in set(frames):  # recursion counts once per sample
            total_samples[name] += count
    if samples == 0:
        return []
    return [
        FunctionCost(name, 100 * count / samples, 100 * total_samples[name] / samples)
        for name, count in self_samples.most_common(limit)
    ]
