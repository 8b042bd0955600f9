"""The standbys of a multi-host DSN, and how their copy of a failover slot is doing.

A DSN such as ``host=db1,db2 port=5432,5432 target_session_attrs=read-write`` names the
primary and its standbys; libpq connects to whichever is the primary. The other hosts
are asked directly (``target_session_attrs=any``) whether they are in recovery and, if so,
whether their slot sync worker has a valid, current copy of the bridge's slot (17+).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_bridge.core.lsn import parse_lsn

PROBE_TIMEOUT = 5.0  # seconds for one standby: a dead host must not hold up /status


@dataclass(frozen=True, slots=True)
class StandbySlot:
    """One standby's view of the slot. ``error`` set: it could not be asked."""

    server: str  # host:port
    synchronized: bool = False  # a synced copy exists and is not invalidated
    confirmed_flush_lsn: int | None = None
    invalidated: str | None = None  # pg_replication_slots.invalidation_reason
    error: str | None = None


def dsn_hosts(dsn: str) -> list[tuple[str, str]]:
    """(host, port) of each host a (multi-host) DSN names, in its order."""
    params = conninfo_to_dict(dsn)
    hosts = str(params.get("host") or params.get("hostaddr") or "").split(",")
    ports = str(params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return [(host, port) for host, port in zip(hosts, ports, strict=False) if host]


def host_dsn(dsn: str, host: str, port: str) -> str:
    """The DSN pointed at one host, whatever it is now (primary or standby)."""
    params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    params.pop("hostaddr", None)
    params.update(host=host, port=port, target_session_attrs="any")
    params.setdefault("application_name", "cdc-bridge")
    params["connect_timeout"] = str(int(PROBE_TIMEOUT))
    return make_conninfo("", **params)


def other_hosts(dsn: str, connected: tuple[str, str]) -> list[tuple[str, str]]:
    """The DSN's hosts other than the one a connection reached."""
    return [host for host in dsn_hosts(dsn) if host != connected]


async def standby_slot(
    dsn: str, server: str, slot: str, password: str | None
) -> StandbySlot | None:
    """The slot as the standby at ``dsn`` holds it; None when that host is not a standby."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT * 2):
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, password=password)
            async with conn:
                cur = await conn.execute("SELECT pg_is_in_recovery()")
                row = await cur.fetchone()
                if not row or not row[0]:
                    return None
                cur = await conn.execute(
                    "SELECT synced, confirmed_flush_lsn::text, invalidation_reason"
                    " FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,),
                )
                found = await cur.fetchone()
    except (psycopg.Error, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StandbySlot(server, error=first)
    if found is None:
        return StandbySlot(server)
    return StandbySlot(
        server,
        synchronized=bool(found[0]) and found[2] is None,
        confirmed_flush_lsn=parse_lsn(found[1]) if found[1] else None,
        invalidated=found[2],
    )


async def standby_slots(
    dsn: str, connected: tuple[str, str], slot: str, password: str | None
) -> list[StandbySlot]:
    """Every standby among the DSN's other hosts (hosts that cannot be asked included)."""
    probes = [
        standby_slot(host_dsn(dsn, host, port), f"{host}:{port}", slot, password)
        for host, port in other_hosts(dsn, connected)
    ]
    return [found for found in await asyncio.gather(*probes) if found is not None]


def behind_bytes(standby: StandbySlot, confirmed: int) -> int | None:
    """How far the standby's copy trails the position the bridge confirmed."""
    if standby.confirmed_flush_lsn is None or standby.error is not None:
        return None
    return max(confirmed - standby.confirmed_flush_lsn, 0)


def standby_document(
    standby: StandbySlot, behind: int | None, redact: Callable[[str], str]
) -> dict[str, object]:
    """One standby in /status; its error (from libpq) redacted like every other error."""
    return {
        "server": standby.server,
        "synchronized": standby.synchronized,
        "behind_bytes": behind,
        "invalidated": standby.invalidated,
        "error": redact(standby.error) if standby.error else None,
    }
