"""The standbys of a multi-host DSN, and how their copy of a failover slot is doing.

A DSN such as ``host=db1,db2 port=5432,5432 target_session_attrs=read-write`` names the
primary and its standbys; libpq connects to whichever is the primary. The other hosts
are asked directly (``target_session_attrs=any``) whether they are in recovery and, if so,
whether their slot sync worker has a valid, persistent copy of the bridge's slot (17+).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_bridge.core.lsn import parse_lsn

PROBE_TIMEOUT = 5.0  # seconds for one standby: a dead host must not hold up /status


CopyState = Literal["missing", "invalidated", "temporary", "ready"]


def copy_state(synced: bool | None, temporary: bool | None, invalidated: str | None) -> CopyState:
    """Whether a standby's copy of the failover slot survives its promotion: the one
    readiness rule (``check``, ``slots show``, /status, the metrics and the bridge's
    warning all ask it). Ready = synced AND NOT temporary AND not invalidated.

    From pg_replication_slots on the standby (None: no such row). The slot sync worker
    first makes a copy ``temporary`` and persists it only once the primary's slot has
    caught up with what the standby reserved; a temporary copy is dropped at promotion."""
    if not synced:
        return "missing"
    if invalidated is not None:
        return "invalidated"
    if temporary:
        return "temporary"
    return "ready"


def copy_reason(state: CopyState, invalidated: str | None = None) -> str | None:
    """Why a copy in ``state`` is not ready yet, for every reader alike; None: ready."""
    if state == "missing":
        return "no synchronized copy of the slot"
    if state == "invalidated":
        return f"its copy is invalidated ({invalidated})"
    if state == "temporary":
        return (
            "its copy is still temporary (not ready yet): the primary's slot has not caught "
            "up with what the standby reserved, and a temporary copy is dropped at promotion"
        )
    return None


@dataclass(frozen=True, slots=True)
class StandbySlot:
    """One standby's view of the slot. ``error`` set: it could not be asked."""

    server: str  # host:port
    synced: bool = False  # pg_replication_slots.synced: a copy the slot sync worker made
    temporary: bool = False  # pg_replication_slots.temporary: not persisted yet
    confirmed_flush_lsn: int | None = None
    invalidated: str | None = None  # pg_replication_slots.invalidation_reason
    error: str | None = None

    @property
    def state(self) -> CopyState:
        return copy_state(self.synced, self.temporary, self.invalidated)

    @property
    def synchronized(self) -> bool:
        """A copy a promotion keeps (and the standby could be asked)."""
        return self.error is None and self.state == "ready"

    @property
    def not_ready(self) -> str | None:
        """Why a failover to this standby would not find the slot; None: it would."""
        if self.error is not None:
            return f"cannot ask it: {self.error}"
        return copy_reason(self.state, self.invalidated)


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
                    "SELECT synced, temporary, confirmed_flush_lsn::text, invalidation_reason"
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
        synced=bool(found[0]),
        temporary=bool(found[1]),
        confirmed_flush_lsn=parse_lsn(found[2]) if found[2] else None,
        invalidated=found[3],
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
        "temporary": standby.temporary,
        "invalidated": standby.invalidated,
        "not_ready": redact(standby.not_ready) if standby.not_ready else None,
        "error": redact(standby.error) if standby.error else None,
    }
