"""A throwaway PostgreSQL: initdb, settings, start and stop, as the ``postgres`` account when
we are root (PostgreSQL refuses root; ``subprocess`` switches user in the child, so the
process we hold is the postmaster itself)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from cdc_bridge.dev.pg_account import (
    bindir_for,
    postgres_account,
    require_reachable,
)
from cdc_bridge.dev.pginstall import PgInstall, PgInstallNotFound, find_pg_install
from cdc_bridge.dev.processes import (
    POLL_INTERVAL,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevstackError,
    ServerProcess,
    dies_with_parent,
    free_port,
    log_tail,
    require_port_free,
    wait_for,
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


_UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


_SETTINGS_FILE = "cdc_bridge_devstack.conf"


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


_STOP_SIGNALS = {
    "smart": signal.SIGTERM,  # wait for clients to disconnect
    "fast": signal.SIGINT,  # disconnect clients, checkpoint, exit
    "immediate": signal.SIGQUIT,  # exit now; crash recovery on the next start
}


class PostgresServer(ServerProcess):
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
        self._account = postgres_account()
        try:
            self.install = install if install is not None else find_pg_install()
        except PgInstallNotFound as error:
            raise DevstackError(str(error)) from None
        self._bindir = bindir_for(self.install.bindir, self._account)
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
        require_port_free(self.port, "PostgreSQL")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._account is not None:
            require_reachable(self.base_dir, self._account)
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
            # SIGQUIT: an immediate shutdown, which still ends the backends and frees
            # the shared memory (SIGKILL would leave both behind).
            preexec_fn=dies_with_parent(signal.SIGQUIT),
        )
        try:
            wait_for(
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
            require_reachable(self.base_dir, self._account)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self._give_to_server(self.data_dir)
        self._run_tool(
            "pg_basebackup",
            "--pgdata",
            str(self.data_dir),
            "--dbname",
            f"host=127.0.0.1 port={primary.port} user=postgres",
            "--slot",
            slot,
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
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
                time.sleep(POLL_INTERVAL)
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

    def _run_tool(self, tool: str, *args: str) -> None:
        """One of the install's programs (initdb, pg_basebackup) as the server's account,
        its output in the server's log; one line with the log's tail if it fails."""
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                [str(self._bindir / tool), *args],
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
                f"{tool} failed with code {result.returncode}; log {self.log_path}: "
                f"{log_tail(self.log_path)}"
            )

    def _initdb(self) -> None:
        self._run_tool(
            "initdb",
            "-D",
            str(self.data_dir),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # throwaway: nobody cares about a power cut during initdb
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


def outbox_schema_sql() -> str:
    """The default outbox table's DDL, shipped inside the package."""
    return resources.files("cdc_bridge").joinpath("sql/outbox.sql").read_text(encoding="utf-8")
