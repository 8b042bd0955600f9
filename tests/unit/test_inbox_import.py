"""Applications import cdc_bridge.inbox: nats-py and psycopg, nothing of the daemon's."""

from __future__ import annotations

import subprocess
import sys

from support import paths

CHECK = """
import sys

import cdc_bridge.inbox
loaded = sorted({name.split(".")[0] for name in sys.modules}
                & {"structlog", "pydantic", "yaml", "prometheus_client"})
assert not loaded, f"importing cdc_bridge.inbox loaded {loaded}"
daemon = sorted(name for name in sys.modules if name.startswith(
    ("cdc_bridge.config", "cdc_bridge.bridge", "cdc_bridge.sink", "cdc_bridge.source")))
assert not daemon, f"importing cdc_bridge.inbox loaded {daemon}"
assert "psycopg" in sys.modules and "nats" in sys.modules
"""


def test_importing_the_inbox_library_loads_nats_and_psycopg_only() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=paths.REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
