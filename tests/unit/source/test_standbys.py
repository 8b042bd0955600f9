"""The hosts of a multi-host DSN, in both its forms: where the standbys are looked for;
and whether a standby's copy of the failover slot is ready (the one rule every reader uses)."""

import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc_bridge.cli import json_keys
from cdc_bridge.source.standbys import (
    StandbySlot,
    behind_bytes,
    copy_reason,
    copy_state,
    dsn_hosts,
    host_dsn,
    other_hosts,
    standby_document,
)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db1,db2 port=5432,5433 dbname=app target_session_attrs=read-write",
        "postgresql://cdc@db1:5432,db2:5433/app?target_session_attrs=read-write",
    ],
)
def test_both_forms_name_each_host_with_its_port(dsn: str) -> None:
    assert dsn_hosts(dsn) == [("db1", "5432"), ("db2", "5433")]
    assert other_hosts(dsn, ("db1", "5432")) == [("db2", "5433")]


def test_one_port_serves_every_host_and_no_port_means_5432() -> None:
    assert dsn_hosts("host=a,b port=6000") == [("a", "6000"), ("b", "6000")]
    assert dsn_hosts("host=a dbname=x") == [("a", "5432")]


def test_one_host_is_asked_whatever_it_is_now() -> None:
    params = conninfo_to_dict(host_dsn("host=a,b port=1,2 dbname=app password=s", "b", "2"))
    assert (params["host"], params["port"], params["target_session_attrs"]) == ("b", "2", "any")
    assert params["dbname"] == "app"


# --- the readiness of a standby's copy (issue 29 item 3) ------------------------------


@pytest.mark.parametrize(
    ("synced", "temporary", "invalidated", "state"),
    [
        (None, None, None, "missing"),  # no copy at all
        (False, False, None, "missing"),  # a slot of that name the worker did not make
        (True, False, None, "ready"),
        (True, True, None, "temporary"),  # dropped at promotion: not ready yet
        (True, False, "wal_removed", "invalidated"),
        (True, True, "rows_removed", "invalidated"),
    ],
)
def test_ready_means_synced_and_not_temporary_and_not_invalidated(
    synced: bool | None, temporary: bool | None, invalidated: str | None, state: str
) -> None:
    assert copy_state(synced, temporary, invalidated) == state
    assert (copy_reason(copy_state(synced, temporary, invalidated), invalidated) is None) is (
        state == "ready"
    )


def test_a_temporary_copy_is_not_synchronized_and_says_why() -> None:
    copy = StandbySlot("db2:5432", synced=True, temporary=True, confirmed_flush_lsn=100)
    assert copy.synchronized is False
    assert copy.not_ready is not None
    assert copy.not_ready.startswith("its copy is still temporary (not ready yet)")
    assert "dropped at promotion" in copy.not_ready
    persisted = StandbySlot("db2:5432", synced=True, temporary=False, confirmed_flush_lsn=100)
    assert persisted.synchronized is True and persisted.not_ready is None
    unreachable = StandbySlot("db2:5432", error="connection refused")
    assert unreachable.synchronized is False
    assert unreachable.not_ready == "cannot ask it: connection refused"


def test_status_document_of_a_temporary_copy() -> None:
    copy = StandbySlot("db2:5432", synced=True, temporary=True, confirmed_flush_lsn=100)
    document = standby_document(copy, behind_bytes(copy, 150), str)
    assert tuple(document) == json_keys.STANDBY_KEYS
    assert document["synchronized"] is False and document["temporary"] is True
    assert document["behind_bytes"] == 50 and document["error"] is None
    assert str(document["not_ready"]).startswith("its copy is still temporary")
