"""What `run` does when a problem stops it from streaming, against real servers.

A problem no retry can cure (wal_level, an output plugin the server refuses, a role
without REPLICATION, a wrong password or role, a missing database) ends the process at
start-up with exit 1 and one ``fatal`` line naming the server and the fix; once the
bridge has streamed, even an authentication failure is retried (passwords get rotated).
Servers that are down stay retried, and the line names them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql
from support.bridge import (
    STARTUP_TIMEOUT,
    BridgeProcess,
    MakeBridge,
    log_event,
    parse_json_line,
    start_bridge,
)
from support.outbox import bridge_config

from cdc_bridge.bridge.failures import WAL_LEVEL_FIX, output_plugin_fix
from cdc_bridge.cli.main import main as cli_main
from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer
from cdc_bridge.dev.processes import free_port
from cdc_bridge.sink.connect import stream_overlap

# postgres (the devstack's own checks, the tests' admin connections) comes in without a
# password; every other role must give its password.
PASSWORD_HBA = """\
local  all          all                    trust
host   all          postgres  127.0.0.1/32 trust
host   replication  postgres  127.0.0.1/32 trust
host   all          all       127.0.0.1/32 scram-sha-256
host   replication  all       127.0.0.1/32 scram-sha-256
"""
PASSWORD = "Right-Pw-5e1c"
WRONG_PASSWORD = "Wrong-Pw-9d3a"


@pytest.fixture(scope="module")
def strict_pg_server(devstack_root: Path) -> Iterator[PostgresServer]:
    """Passwords checked, and wal2json refused as an output plugin: the build's default
    output_plugin_libraries, as on a production server of this PostgreSQL build."""
    server = PostgresServer(
        devstack_root / "strict-postgres", hba=PASSWORD_HBA, allow_wal2json=False
    )
    server.start()
    yield server
    server.close()


@pytest.fixture
def strict_database(strict_pg_server: PostgresServer, unique_name: str) -> Iterator[str]:
    """A database of this test's own on the strict server (the superuser's DSN)."""
    name = f"db_{unique_name}"
    dsn = strict_pg_server.create_database(name)
    yield dsn
    strict_pg_server.drop_database(name)


def create_role(admin_dsn: str, name: str, attributes: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                sql.Identifier(name), sql.SQL(attributes), sql.Literal(PASSWORD)
            )
        )


def role_dsn(server: PostgresServer, database: str, role: str, password: str) -> str:
    return f"postgresql://{role}:{password}@127.0.0.1:{server.port}/{database}"


def fatal_line(bridge: BridgeProcess) -> str:
    """The one ``fatal`` line of a bridge that exited 1, and nothing like a traceback."""
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    records = [parse_json_line(line) for line in bridge.lines]
    assert None not in records, "\n".join(bridge.lines)  # every line a log record
    fatal = [record for record in records if record and record["event"] == "fatal"]
    assert len(fatal) == 1, "\n".join(bridge.lines)
    assert not any(record and record["event"] == "session_failed" for record in records)
    return str(fatal[0]["error"])


def failure_line(bridge: BridgeProcess, contains: str, since: int = 0) -> str:
    """The ``error`` of the first session_failed line (from ``since``) with ``contains``."""

    def matches(line: str) -> bool:
        record = parse_json_line(line)
        return bool(
            record
            and record.get("event") == "session_failed"
            and contains in str(record.get("error"))
        )

    record = parse_json_line(bridge.wait_for_log(matches, timeout=STARTUP_TIMEOUT, since=since))
    assert record is not None
    return str(record["error"])


def check(capsys: pytest.CaptureFixture[str], tmp_path: Path, config: dict[str, Any]) -> Any:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    code = cli_main(["check", "--config", str(path)])
    return code, capsys.readouterr().out


# --- problems a restart cannot fix: exit 1 at start-up ----------------------------------------


def test_a_refused_output_plugin_fails_check_and_stops_run_with_the_same_fix(
    strict_pg_server: PostgresServer,
    strict_database: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = bridge_config(strict_database, nats_url, unique_name, postgres={"plugin": "wal2json"})
    fix = output_plugin_fix("wal2json")
    code, out = check(capsys, tmp_path, config)
    assert code == 1
    [line] = [line for line in out.splitlines() if "postgres.slot" in line]
    assert line.startswith("FAIL  postgres.slot")
    assert "wal2json is not in output_plugin_libraries" in line and line.endswith(fix)

    error = fatal_line(make_bridge(config))
    assert error.startswith(f"PostgreSQL at 127.0.0.1:{strict_pg_server.port}: ")
    assert 'library "wal2json" may not be used as an output plugin' in error
    assert error.endswith(f"(fix: {fix})")


def test_wal_level_replica_stops_run_with_the_alter_system_fix(
    devstack_tmp: Path, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    with PostgresServer(devstack_tmp / "postgres", settings={"wal_level": "replica"}) as server:
        dsn = server.create_database("replica_only")
        error = fatal_line(make_bridge(bridge_config(dsn, nats_url, unique_name)))
    assert error.startswith(f"PostgreSQL at 127.0.0.1:{server.port}: ")
    # PostgreSQL 18 quotes the names: logical decoding requires "wal_level" >= "logical"
    assert "logical decoding requires wal_level >= logical" in error.replace('"', "")
    assert error.endswith(f"(fix: {WAL_LEVEL_FIX})")


def test_a_wrong_password_at_start_up_stops_run(
    strict_pg_server: PostgresServer,
    strict_database: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    create_role(strict_database, unique_name, "REPLICATION")
    dsn = role_dsn(strict_pg_server, f"db_{unique_name}", unique_name, WRONG_PASSWORD)
    bridge = make_bridge(bridge_config(dsn, nats_url, unique_name))
    error = fatal_line(bridge)
    assert error.startswith(f"PostgreSQL at 127.0.0.1:{strict_pg_server.port}: ")
    assert f'password authentication failed for user "{unique_name}"' in error
    assert "postgres.dsn" in error and "(fix: " in error
    assert not any(WRONG_PASSWORD in line for line in bridge.lines)


def test_an_unknown_role_at_start_up_stops_run(
    pg_server: PostgresServer,
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    dsn = pg_dsn.replace("postgres@", "nobody_here@")
    error = fatal_line(make_bridge(bridge_config(dsn, nats_url, unique_name)))
    assert error.startswith(f"PostgreSQL at 127.0.0.1:{pg_server.port}: ")
    assert 'role "nobody_here" does not exist' in error and "(fix: " in error


def test_a_missing_database_at_start_up_stops_run(
    pg_server: PostgresServer, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    dsn = pg_server.dsn(f"missing_{unique_name}")
    error = fatal_line(make_bridge(bridge_config(dsn, nats_url, unique_name)))
    assert error.startswith(f"PostgreSQL at 127.0.0.1:{pg_server.port}: ")
    assert f'database "missing_{unique_name}" does not exist' in error
    assert error.endswith("(fix: check the database name in postgres.dsn)")


def test_a_role_without_replication_stops_run_with_the_alter_role_fix(
    strict_pg_server: PostgresServer,
    strict_database: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    create_role(strict_database, unique_name, "NOREPLICATION")
    dsn = role_dsn(strict_pg_server, f"db_{unique_name}", unique_name, PASSWORD)
    error = fatal_line(make_bridge(bridge_config(dsn, nats_url, unique_name)))
    assert error.startswith(f"PostgreSQL at 127.0.0.1:{strict_pg_server.port}: ")
    # PostgreSQL 15: "must be superuser or replication role"; 16+: "permission denied to
    # start WAL sender" (the REPLICATION attribute in its detail)
    assert "replication role" in error or "start WAL sender" in error
    assert error.endswith(f"(fix: ALTER ROLE {unique_name} REPLICATION)")


def auth_nats(folder: Path, password: str, port: int | None = None) -> NatsServer:
    """A nats-server whose one user is ``bridge`` with ``password``."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "nats-server.conf"
    config_path.write_text(
        f'authorization {{\n  users = [ {{ user: bridge, password: "{password}" }} ]\n}}\n'
    )
    server = NatsServer(folder, port=port, extra_args=["-c", str(config_path)])
    server.start()
    return server


@pytest.mark.parametrize("wrong", ["password", "user"])
def test_wrong_nats_credentials_at_start_up_stop_run(
    wrong: str,
    pg_dsn: str,
    devstack_tmp: Path,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    server = auth_nats(devstack_tmp / "nats-auth", PASSWORD)
    try:
        user = "bridge" if wrong == "password" else "nobody"
        password = WRONG_PASSWORD if wrong == "password" else PASSWORD
        config = bridge_config(
            pg_dsn, server.url, unique_name, nats={"user": user, "password": password}
        )
        error = fatal_line(make_bridge(config))
    finally:
        server.close()
    assert error.startswith(f"cannot connect to NATS at nats://127.0.0.1:{server.port}: "), error
    assert "Authorization Violation" in error
    assert "(fix: check nats.user and nats.password" in error, error
    assert PASSWORD not in error and WRONG_PASSWORD not in error


# --- after streaming, and servers that are away: retried ---------------------------------------


def test_after_streaming_refused_nats_credentials_are_retried_until_fixed(
    pg_dsn: str,
    devstack_tmp: Path,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    folder = devstack_tmp / "nats-auth"
    server = auth_nats(folder, PASSWORD)
    try:
        config = bridge_config(
            pg_dsn, server.url, unique_name, nats={"user": "bridge", "password": PASSWORD}
        )
        bridge = start_bridge(make_bridge, config)
        mark = bridge.mark()
        server.close()  # the password is rotated on the server first
        server = auth_nats(folder, "rotated-pw", port=server.port)
        error = failure_line(bridge, "Authorization Violation", since=mark)
        assert error.startswith(f"cannot connect to NATS at nats://127.0.0.1:{server.port}: ")
        assert bridge.running
        server.close()  # ... and back: the bridge, still retrying, gets in by itself
        server = auth_nats(folder, PASSWORD, port=server.port)
        bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT, since=mark)
        assert not any(log_event("fatal")(line) for line in bridge.lines)
        assert bridge.terminate() == 0
    finally:
        server.close()



def test_after_streaming_an_authentication_failure_is_retried_until_fixed(
    strict_pg_server: PostgresServer,
    strict_database: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    create_role(strict_database, unique_name, "SUPERUSER")
    dsn = role_dsn(strict_pg_server, f"db_{unique_name}", unique_name, PASSWORD)
    bridge = start_bridge(make_bridge, bridge_config(dsn, nats_url, unique_name))
    mark = bridge.mark()
    role = sql.Identifier(unique_name)
    with psycopg.connect(strict_database, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal("rotated")))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (unique_name,),
        )
        error = failure_line(bridge, "password authentication failed", since=mark)
        assert error.startswith(f"PostgreSQL at 127.0.0.1:{strict_pg_server.port}: ")
        assert bridge.running
        # The rotation completes: the bridge, still retrying, gets back in by itself.
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(PASSWORD)))
    bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT, since=mark)
    assert not any(log_event("fatal")(line) for line in bridge.lines)
    assert bridge.terminate() == 0


def test_an_unreachable_nats_server_is_named_by_run_and_check(
    pg_dsn: str,
    unique_name: str,
    tmp_path: Path,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    secret = "NatsSecret-77aa"
    config = bridge_config(pg_dsn, f"nats://bridge:{secret}@127.0.0.1:{port}", unique_name)
    named = f"cannot connect to NATS at nats://bridge:***@127.0.0.1:{port}: "
    bridge = make_bridge(config)
    error = failure_line(bridge, "NATS")
    assert error.startswith(named), error
    assert bridge.running  # a server that is away may come back

    code, out = check(capsys, tmp_path, config)
    assert code == 1
    [line] = [line for line in out.splitlines() if "nats.server" in line]
    assert named in line
    assert secret not in out and not any(secret in line for line in bridge.lines)


def test_a_stream_overlapping_another_bridges_stream_fails_check_init_and_run_naming_it(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 29 item 1: a second bridge whose stream's subjects overlap the first one's
    stream (debezium.yaml beside cloudevents.yaml, as they were): JetStream refuses to
    create it (err_code 10065). `check` FAILs, `init` reports it, `run` exits 1 at
    start-up: one line naming the other stream with what it stores, and the fix."""
    first = bridge_config(pg_dsn, nats_url, unique_name)
    first["nats"]["stream"]["subjects"] = [f"{unique_name}.>", f"audit_{unique_name}.>"]
    bridge = start_bridge(make_bridge, first)  # creates its stream
    assert bridge.terminate() == 0
    second_name = f"{unique_name}b"
    second = bridge_config(pg_dsn, nats_url, second_name)
    second["nats"]["stream"]["subjects"] = [f"{second_name}.>", f"{unique_name}.>"]
    expected = stream_overlap(
        second_name.upper(),
        [f"{second_name}.>", f"{unique_name}.>"],
        [(unique_name.upper(), (f"{unique_name}.>", f"audit_{unique_name}.>"))],
    )

    code, out = check(capsys, tmp_path, second)
    assert code == 1
    [line] = [line for line in out.splitlines() if "nats.stream " in line]
    assert line.startswith("FAIL  nats.stream ")
    assert expected.problem in line and line.endswith(expected.fix), out

    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(second, sort_keys=False))
    capsys.readouterr()
    assert cli_main(["init", "--config", str(path), "--json"]) == 1
    steps = json.loads(capsys.readouterr().out)
    assert [s["detail"] for s in steps if s["kind"] == "stream"] == [expected.line]
    assert "STREAM.CREATE" not in json.dumps(steps)  # not a permissions problem

    assert fatal_line(make_bridge(second)) == expected.line


# --- normal events are not logged as problems --------------------------------------------------


def test_slot_created_and_standby_are_info_lines_without_an_error(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    leader = start_bridge(make_bridge, config)
    standby = make_bridge(config)
    standby.wait_for_log(log_event("standby"), timeout=STARTUP_TIMEOUT)
    [created] = [r for r in leader.json_records() if r["event"] == "slot_created"]
    [waiting] = [r for r in standby.json_records() if r["event"] == "standby"]
    for record in (created, waiting):
        assert record["level"] == "info" and "error" not in record, record
    assert "only events committed from now on are streamed" in created["detail"]
    assert "another bridge holds" in waiting["reason"]
    assert standby.terminate() == 0 and leader.terminate() == 0
