"""The ceiling: PostgreSQL's own client draining a pgoutput slot to /dev/null.

``pg_recvlogical`` does nothing per change but write it out, so its rate is what the
walsender can decode and send for one slot: no relay reading that slot can beat it.
It stops by itself at ``--endpos`` (the WAL position after the backlog).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.dev.pginstall import find_pg_bindir


def recvlogical_binary() -> Path:
    return find_pg_bindir() / "pg_recvlogical"


def drain_with_pg_recvlogical(
    dsn: str, slot: str, publication: str, endpos: int, timeout: float = 300.0
) -> float:
    """Seconds ``pg_recvlogical`` takes from its start to reaching ``endpos``."""
    command = [
        str(recvlogical_binary()),
        "--dbname",
        dsn,
        "--slot",
        slot,
        "--start",
        "--no-loop",
        "--file",
        "/dev/null",
        "--option",
        "proto_version=1",
        "--option",
        f"publication_names={publication}",
        "--endpos",
        format_lsn(endpos),
    ]
    # PG* variables of the caller must not steer it to another server
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"pg_recvlogical exited with code {result.returncode}: {result.stderr.strip()}"
        )
    return elapsed
