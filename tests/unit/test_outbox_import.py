"""Applications import cdc_bridge.outbox: it must not drag in the bridge's own dependencies."""

from __future__ import annotations

import subprocess
import sys

from support import paths

REPO_ROOT = paths.REPO

# nats, structlog and pydantic are the daemon's; opentelemetry is imported only when an
# event is emitted (and only if it is installed).
CHECK = """
import sys

import cdc_bridge.outbox
loaded = sorted({name.split(".")[0] for name in sys.modules}
                & {"nats", "structlog", "pydantic", "yaml", "opentelemetry"})
assert not loaded, f"importing cdc_bridge.outbox loaded {loaded}"
assert "psycopg" in sys.modules
"""


def test_importing_the_outbox_library_loads_psycopg_only() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
