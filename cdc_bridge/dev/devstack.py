"""Throwaway PostgreSQL and nats-server processes: for the tests and for ``cdc-bridge dev``.

Each server lives in a folder the caller owns (data, logs, sockets) on a free loopback port,
so nothing here touches a PostgreSQL or NATS the machine already runs. Servers are started in
their own session (``start_new_session``) so a Ctrl-C in the terminal reaches only our process,
which then stops them in order; ``close()`` always stops what was started.

PostgreSQL refuses to run as root. When we are root, the data folders are handed to the
``postgres`` account and ``initdb``/``postgres`` run as that account (``subprocess`` switches
user in the child, so the process we hold is the postmaster itself, not a ``runuser`` wrapper
whose death would orphan the server).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer, outbox_schema_sql
from cdc_bridge.dev.processes import (
    DevstackError,
    Service,
)

# The table of the README's emit() example, so that snippet runs as written on `make dev`.
DEV_TICKETS_SQL = """
CREATE TABLE IF NOT EXISTS public.tickets (
    id    text PRIMARY KEY,
    title text NOT NULL
);
"""


def dev_schema_sql() -> str:
    """What ``cdc-bridge dev`` creates in its database: the outbox and a ``tickets`` table."""
    return outbox_schema_sql() + DEV_TICKETS_SQL


MARKER_NAME = ".cdc-bridge-devstack"


_MARKER_TEXT = (
    "Created by cdc-bridge dev: its next start wipes this folder. Delete it to clean up.\n"
)


def _running_postmaster(base_dir: Path) -> int | None:
    """The pid in the stack's postmaster.pid when that process is alive."""
    try:
        first_line = (base_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0]
        pid = int(first_line)
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, under another account
    return pid


def wipe_devstack_dir(base_dir: Path) -> None:
    """Remove ``base_dir`` if an earlier DevStack made it; DevstackError (nothing removed)
    when it holds anything else, or when that stack still runs."""
    if not base_dir.exists() and not base_dir.is_symlink():
        return
    if base_dir.is_symlink() or not base_dir.is_dir():
        raise DevstackError(
            f"{base_dir} is not a folder cdc-bridge dev created, so it is not wiped: "
            "choose another --dir"
        )
    if not any(base_dir.iterdir()):
        return
    if not (base_dir / MARKER_NAME).is_file():
        raise DevstackError(
            f"{base_dir} is not empty and has no {MARKER_NAME} (the mark cdc-bridge dev "
            "leaves in its folders), so it is not wiped: delete it yourself (make clean "
            "deletes .devstack) or choose another --dir"
        )
    pid = _running_postmaster(base_dir)
    if pid is not None:
        raise DevstackError(
            f"a dev stack still runs from {base_dir} (PostgreSQL pid {pid}): stop it first "
            "(Ctrl-C where it runs, or kill it)"
        )
    shutil.rmtree(base_dir)


class DevStack(Service):
    """PostgreSQL and nats-server side by side under one folder, for ``cdc-bridge dev``.

    ``fresh``: wipe what an earlier stack left in the folder before starting, so every run
    starts from an empty database and stream (a resumed stream would hold the old run's
    events beside the new ones). Only a folder this class created is wiped: it leaves
    ``MARKER_NAME`` in it.
    """

    def __init__(self, base_dir: Path, *, fresh: bool = False) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.fresh = fresh
        self.postgres = PostgresServer(self.base_dir / "postgres")
        self.nats = NatsServer(self.base_dir / "nats")

    def start(self) -> None:
        if self.fresh:
            wipe_devstack_dir(self.base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / MARKER_NAME).write_text(_MARKER_TEXT, encoding="utf-8")
        self.postgres.start()
        try:
            self.nats.start()
        except BaseException:
            self.postgres.close()
            raise

    def close(self) -> None:
        """Stop NATS, then PostgreSQL; both are tried even if the first fails."""
        try:
            self.nats.close()
        finally:
            self.postgres.close()

    def environment(self) -> dict[str, str]:
        """The variables the dev config expands: where the bridge finds this stack."""
        return {
            "CDC_BRIDGE_DEV_DSN": self.postgres.dsn(),
            "CDC_BRIDGE_DEV_NATS_URL": self.nats.url,
        }
