"""The hosts of a multi-host DSN, in both its forms: where the standbys are looked for."""

import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc_bridge.source.standbys import dsn_hosts, host_dsn, other_hosts


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
