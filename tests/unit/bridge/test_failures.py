"""Which failures end `run` at start-up, and the one line each gets (errors, daemon)."""

from __future__ import annotations

import nats.errors
import psycopg
import pytest
import yaml
from psycopg import errors as pg_errors

from cdc_bridge.bridge.failures import (
    AUTH_FIX,
    DATABASE_FIX,
    WAL_LEVEL_FIX,
    nats_auth_fix,
    output_plugin_fix,
    postgres_error_class,
    start_up_fix,
)
from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.bridge.session import BridgeState
from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.bridge.supervisor import describe, give_up
from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.sink.connect import (
    NatsAuthError,
    NatsConnectError,
    NatsPermissionError,
    auth_refused,
    nats_address,
    unreachable,
)
from cdc_bridge.sink.publisher import PublishError, StreamLimitError
from cdc_bridge.sink.stream_limits import StreamLimit
from cdc_bridge.source.replication import ReplicationError, server_address

REFUSED = 'connection failed: connection to server at "10.0.0.5", port 5433 failed: FATAL:  '


def config(dsn: str = "postgresql://cdc:pw@db1:5433/app", plugin: str = "pgoutput") -> BridgeConfig:
    document = {
        "postgres": {"dsn": dsn, "plugin": plugin},
        "nats": {
            "servers": ["nats://u:npw@n1:4222", "nats://n2:4222"],
            "stream": {"name": "S", "subjects": ["events.>"]},
        },
        "routes": [{"subject": "events.{event_type}"}],
    }
    return parse_config(yaml.safe_dump(document), env={})


def refused(server_says: str) -> psycopg.OperationalError:
    """A failed connect as psycopg raises it: libpq's words, and no SQLSTATE."""
    return psycopg.OperationalError(REFUSED + server_says)


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (
            pg_errors.ObjectNotInPrerequisiteState(
                "logical decoding requires wal_level >= logical"
            ),
            WAL_LEVEL_FIX,
        ),
        (
            ReplicationError.from_error(
                pg_errors.ObjectNotInPrerequisiteState(
                    "logical decoding requires wal_level >= logical"
                )
            ),
            WAL_LEVEL_FIX,
        ),
        (
            pg_errors.InsufficientPrivilege(
                'library "wal2json" may not be used as an output plugin'
            ),
            output_plugin_fix("wal2json"),
        ),
        (
            ReplicationError.from_error(
                pg_errors.InsufficientPrivilege(
                    'library "wal2json" may not be used as an output plugin'
                )
            ),
            output_plugin_fix("wal2json"),
        ),
        (
            pg_errors.InsufficientPrivilege(
                "must be superuser or replication role to use replication slots"
            ),
            "ALTER ROLE cdc REPLICATION",
        ),
        (
            refused("must be superuser or replication role to start walsender"),
            "ALTER ROLE cdc REPLICATION",
        ),
        (refused("permission denied to start WAL sender"), "ALTER ROLE cdc REPLICATION"),
        (refused('password authentication failed for user "cdc"'), AUTH_FIX),
        (refused('role "cdc" does not exist'), AUTH_FIX),
        (refused('no pg_hba.conf entry for host "10.0.0.9", user "cdc", database "app"'), AUTH_FIX),
        (
            psycopg.OperationalError("connection failed: fe_sendauth: no password supplied"),
            AUTH_FIX,
        ),
        (refused('database "app" does not exist'), DATABASE_FIX),
    ],
)
def test_what_no_retry_can_cure_gets_its_fix(error: Exception, fix: str) -> None:
    assert start_up_fix(error, config(plugin="wal2json")) == fix


def test_a_plugin_that_is_not_installed_and_other_refusals() -> None:
    missing = pg_errors.UndefinedFile('could not access file "wal2json": No such file')
    assert start_up_fix(missing, config(plugin="wal2json")) == (
        "install wal2json on the database server, or use plugin: pgoutput"
    )
    # A refused request (a bad plugin option, a missing object) is asked again in vain.
    option = ReplicationError.from_error(
        pg_errors.InvalidParameterValue('option "x" = "y" is unknown')
    )
    assert postgres_error_class(option) is pg_errors.InvalidParameterValue
    assert start_up_fix(option, config()) is not None
    denied = pg_errors.InsufficientPrivilege("permission denied for table outbox")
    assert start_up_fix(denied, config()) == (
        "grant role cdc what it needs (sql/role.sql, docs/security.md)"
    )


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError(
            'connection failed: connection to server at "db1", port 5433 failed: Connection refused'
        ),
        refused("the database system is starting up"),
        refused("sorry, too many clients already"),
        pg_errors.CannotConnectNow("the database system is shutting down"),
        pg_errors.AdminShutdown("terminating connection due to administrator command"),
        ReplicationError("replication connection lost: server closed the connection"),
        # On a standby that is about to be promoted: a retry reaches the new primary.
        pg_errors.ObjectNotInPrerequisiteState("logical decoding cannot be used while in recovery"),
        # Raced `cdc-bridge init` to create the slot: the next try finds it.
        pg_errors.DuplicateObject('replication slot "s" already exists'),
        TimeoutError(),
        nats.errors.NoServersError(),
    ],
)
def test_servers_down_restarting_or_full_are_retried(error: Exception) -> None:
    assert start_up_fix(error, config()) is None


def test_refused_nats_credentials_get_the_fix_for_the_configured_method() -> None:
    refused_line = "cannot connect to NATS at nats://u:***@n1:4222: nats: 'Authorization Violation'"
    error = NatsAuthError(refused_line)
    assert start_up_fix(error, config()) == nats_auth_fix(config())
    assert "nats.user and nats.password" in nats_auth_fix(config())
    assert describe(error, config()) == refused_line
    assert auth_refused(nats.errors.Error("nats: 'Authorization Violation'"))
    assert auth_refused(nats.errors.Error("nats: 'User Authentication Expired'"))
    assert auth_refused(nats.errors.AuthorizationError())
    assert not auth_refused(ConnectionRefusedError(111))
    # An unreachable server is not refused credentials: retried.
    assert start_up_fix(NatsConnectError("cannot connect to NATS at x: 111"), config()) is None


def test_only_a_bridge_that_never_streamed_gives_up() -> None:
    state = BridgeState(status=BridgeStatus(slot="s", stream="S"), metrics=Metrics())
    wrong_password = refused('password authentication failed for user "cdc"')
    assert give_up(wrong_password, config(), state) == (
        f'PostgreSQL at 10.0.0.5:5433: password authentication failed for user "cdc" '
        f"(fix: {AUTH_FIX})"
    )
    state.has_streamed = True  # a password rotation in progress: retried
    assert give_up(wrong_password, config(), state) is None


def test_failure_lines_name_the_server_without_a_password() -> None:
    cfg = config()
    # The server libpq names (of a multi-host DSN, the one that failed) wins over the DSN's.
    assert (
        describe(refused("too many clients"), cfg)
        == "PostgreSQL at 10.0.0.5:5433: too many clients"
    )
    assert describe(ReplicationError("FATAL:  terminating connection"), cfg) == (
        "PostgreSQL at db1:5433: terminating connection"
    )
    socket = psycopg.OperationalError(
        'connection failed: connection to server on socket "/run/pg/.s.PGSQL.5432" failed: '
        "No such file or directory"
    )
    assert describe(socket, cfg) == "PostgreSQL at /run/pg/.s.PGSQL.5432: No such file or directory"
    assert describe(nats.errors.NoServersError(), cfg) == (
        "cannot connect to NATS at nats://u:***@n1:4222, nats://n2:4222: no server answered"
    )


def test_server_address_and_unreachable_nats() -> None:
    assert server_address("postgresql://u:pw@127.0.0.1:5433/db") == "127.0.0.1:5433"
    assert server_address("host=a,b port=1,2 dbname=x password=zz") == "a:1,b:2"
    assert server_address("postgresql://u@[::1]/x") == "[::1]:5432"
    assert server_address("host=x password=p x") == "(unparsable postgres.dsn)"
    line = unreachable(["nats://u:s3cret@h:4222", "tls://tok3n@h2"], ConnectionRefusedError(111))
    assert line == "cannot connect to NATS at nats://u:***@h:4222, tls://***@h2: 111"


def test_a_full_stream_is_described_by_its_own_words_and_the_server() -> None:
    error = StreamLimitError("S", StreamLimit("max_msgs", "--max-msgs"), {"max_msgs": 3}, "e.x")
    assert describe(error, config()) == f"NATS at n1:4222, n2:4222: {error}"
    assert "stream S is full: max_msgs 3 is reached" in describe(error, config())


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (PublishError("NATS connection lost"), "NATS at n1:4222, n2:4222: NATS connection lost"),
        (
            PublishError("JetStream refused a message on events.x: no responders"),
            "NATS at n1:4222, n2:4222: JetStream refused a message on events.x: no responders",
        ),
        (
            NatsPermissionError("NATS permissions: permissions violation for publish to x"),
            "NATS at n1:4222, n2:4222: NATS permissions: permissions violation for publish to x",
        ),
        (nats.errors.TimeoutError(), "NATS at n1:4222, n2:4222: TimeoutError: nats: timeout"),
        (TimeoutError(), "NATS at n1:4222, n2:4222: TimeoutError"),
    ],
)
def test_every_nats_failure_line_names_the_server_without_credentials(
    error: Exception, line: str
) -> None:
    assert describe(error, config()) == line  # config()'s first server has u:npw@


def test_nats_addresses() -> None:
    assert nats_address(["nats://u:pw@h1:4223", "tls://tok@h2", "h3", "[::1]:5"]) == (
        "h1:4223, h2:4222, h3:4222, [::1]:5"
    )
