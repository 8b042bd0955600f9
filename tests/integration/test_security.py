"""Security against real servers, with certificates from a throwaway CA made here.

- PostgreSQL with ``ssl=on`` and ``hostssl`` + SCRAM in pg_hba.conf, and the role from
  sql/role.sql: the bridge connects with ``sslmode=verify-full`` and streams;
- nats-server with TLS (client certificates verified) and user/password, with exactly
  the permissions docs/security.md documents; with an NKey; and with a credentials file
  (operator-mode JWTs made here) carrying those same permissions;
- one clear line for a wrong CA on either side, and for a NATS permission missing;
- a known password, driven through every output path, never appears.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nkeys  # type: ignore[import-untyped]
import psycopg
import pytest
import yaml
from nats.aio.client import RawCredentials
from psycopg import sql
from support import pg_installs
from support.bridge import (
    REPO_ROOT,
    STARTUP_TIMEOUT,
    BridgeProcess,
    MakeBridge,
    log_event,
    parse_json_line,
)
from support.certs import ThrowawayCA, make_ca
from support.nats_jwt import Operator
from support.outbox import Event, bridge_config, insert_events, wait_for_ids
from support.waiting import wait_until

from cdc_bridge.cli.main import main as cli_main
from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer
from cdc_bridge.dev.processes import free_port

# Run on every PostgreSQL major version installed (embedded 18, system 15)
pytestmark = pytest.mark.both_postgres

ROLE_SQL = REPO_ROOT / "sql" / "role.sql"
SECURITY_DOC = REPO_ROOT / "docs" / "security.md"
BRIDGE_ROLE = "cdc_bridge"  # what sql/role.sql creates

# The devstack's own checks and the tests' admin connections come in as postgres
# without a password; everyone else must use TLS and SCRAM.
TLS_HBA = """\
local    all  all                       trust
host     all  postgres  127.0.0.1/32    trust
hostnossl all all       127.0.0.1/32    reject
hostssl  all  all       127.0.0.1/32    scram-sha-256
"""


# --- servers and certificates ------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(devstack_root: Path) -> ThrowawayCA:
    return make_ca(devstack_root / f"ca-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def wrong_ca(devstack_root: Path) -> ThrowawayCA:
    """Another CA: verifying our servers against it must fail."""
    return make_ca(devstack_root / f"wrong-ca-{uuid.uuid4().hex[:8]}", name="someone-else")


@pytest.fixture(scope="module")
def tls_pg_server(devstack_root: Path, ca: ThrowawayCA) -> Iterator[PostgresServer]:
    install = pg_installs.choose(frozenset({pg_installs.TLS}))
    ca.give_server_key_to_postgres()
    server = PostgresServer(
        devstack_root / f"tls-postgres-{uuid.uuid4().hex[:8]}",
        install=install,
        settings={
            "ssl": "on",
            "ssl_cert_file": str(ca.server.cert),
            "ssl_key_file": str(ca.server.key),
            "password_encryption": "scram-sha-256",
        },
        hba=TLS_HBA,
    )
    server.start()
    yield server
    server.close()


def role_password() -> str:
    return f"role-{uuid.uuid4().hex}"


@pytest.fixture
def tls_database(tls_pg_server: PostgresServer, unique_name: str) -> Iterator[tuple[str, str]]:
    """A database with the outbox and sql/role.sql applied: (its name, the role's password)."""
    name = f"db_{unique_name}"
    tls_pg_server.create_database(name)
    password = role_password()
    with psycopg.connect(tls_pg_server.dsn(name), autocommit=True) as conn:
        conn.execute(ROLE_SQL.read_text().encode())
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(BRIDGE_ROLE), sql.Literal(password)
            )
        )
    yield name, password
    tls_pg_server.drop_database(name)


def bridge_role_dsn(server: PostgresServer, database: str, ca_file: Path) -> str:
    """The bridge's DSN: no password in it (that comes from postgres.password_file)."""
    return (
        f"host=127.0.0.1 port={server.port} dbname={database} user={BRIDGE_ROLE} "
        f"sslmode=verify-full sslrootcert={ca_file}"
    )


def documented_authorization(password: str) -> str:
    """The nats-server authorization block of docs/security.md, verbatim but for the
    password, plus an admin user for the test's own reading."""
    section = SECURITY_DOC.read_text().split("### Example nats-server authorization", 1)[1]
    block = section.split("```conf\n", 1)[1].split("```", 1)[0]
    assert "$CDC_BRIDGE_NATS_PASSWORD" in block
    block = block.replace("$CDC_BRIDGE_NATS_PASSWORD", json.dumps(password))
    return block.replace(
        "users = [\n", 'users = [\n    { user: admin, password: "admin-pw" }\n', 1
    )


def documented_permissions() -> tuple[list[str], list[str]]:
    """The publish and subscribe allow lists of that block."""
    block = documented_authorization("unused")
    lists = []
    for direction in ("publish:", "subscribe:"):
        allowed = block.split(direction, 1)[1].split("allow:", 1)[1].split("]", 1)[0]
        lists.append(re.findall(r'"([^"]+)"', allowed))
    return lists[0], lists[1]


def start_nats(folder: Path, config: str) -> NatsServer:
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "nats-server.conf"
    config_path.write_text(config)
    server = NatsServer(folder, extra_args=["-c", str(config_path)])
    server.start()
    return server


def tls_block(ca: ThrowawayCA) -> str:
    return (
        f'tls {{ cert_file: "{ca.server.cert}", key_file: "{ca.server.key}", '
        f'ca_file: "{ca.ca}", verify: true, timeout: 3 }}\n'
    )


def client_tls(ca: ThrowawayCA) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca))
    context.load_cert_chain(str(ca.client.cert), str(ca.client.key))
    return context


def stream_ids(url: str, stream: str, **connect: Any) -> list[str]:
    """The Nats-Msg-Id of every message in ``stream`` (empty while it does not exist)."""

    async def read() -> list[str]:
        client = await nats.connect(url, allow_reconnect=False, connect_timeout=5, **connect)
        try:
            jsm = client.jsm(timeout=5)
            try:
                state = (await jsm.stream_info(stream)).state
            except nats.js.errors.NotFoundError:
                return []
            ids = []
            for seq in range(state.first_seq, state.last_seq + 1 if state.messages else 0):
                message = await jsm.get_msg(stream, seq=seq)
                ids.append((message.headers or {}).get("Nats-Msg-Id", ""))
            return ids
        finally:
            await client.close()

    return asyncio.run(read())


def secret_file(folder: Path, name: str, secret: str) -> str:
    path = folder / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


def session_failure(bridge: BridgeProcess, contains: str, timeout: float = 30.0) -> str:
    """The ``error`` of the first session_failed line containing ``contains``."""

    def matches(line: str) -> bool:
        record = parse_json_line(line)
        return bool(
            record and record.get("event") == "session_failed"
            and contains in str(record.get("error"))
        )

    record = parse_json_line(bridge.wait_for_log(matches, timeout=timeout))
    assert record is not None
    return str(record["error"])


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli_main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def write_config(folder: Path, config: dict[str, Any], name: str = "ops.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


# --- the hardened set-up ------------------------------------------------------------------


def test_least_privilege_role_over_verified_tls_on_both_sides(
    tls_pg_server: PostgresServer,
    tls_database: tuple[str, str],
    ca: ThrowawayCA,
    devstack_tmp: Path,
    tmp_path: Path,
    unique_name: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, pg_password = tls_database
    nats_password = f"nats-{uuid.uuid4().hex}"
    server = start_nats(
        devstack_tmp / "nats", tls_block(ca) + documented_authorization(nats_password)
    )
    try:
        config: dict[str, Any] = {
            "postgres": {
                "dsn": bridge_role_dsn(tls_pg_server, database, ca.ca),
                "password_file": secret_file(tmp_path, "pg-password", pg_password),
                "slot": unique_name,
                "publication": unique_name,
                "status_interval": "200ms",
                "connect_timeout": "5s",
            },
            "nats": {
                "servers": [f"tls://127.0.0.1:{server.port}"],
                "tls": {
                    "ca_file": str(ca.ca),
                    "cert_file": str(ca.client.cert),
                    "key_file": str(ca.client.key),
                },
                "user": "cdc_bridge",
                "password_file": secret_file(tmp_path, "nats-password", nats_password),
                "ack_timeout": "2s",
                "stream": {"name": "OUTBOX", "subjects": ["events.>"]},
            },
            "routes": [{"subject": "events.{aggregate_type}.{event_type}"}],
            "dead_letter": {"subject": "events.dead"},
            "logging": {"format": "json", "level": "info"},
            "shutdown_timeout": "5s",
        }
        config_path = write_config(tmp_path, config)
        admin_dsn = tls_pg_server.dsn(database)
        # The administrator's one-off: the publication (the role may not create it).
        code, output = run_cli(capsys, "init", "--config", config_path, "--dsn", admin_dsn)
        assert code == 0, output

        bridge = make_bridge(config)
        bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
        ids = insert_events(admin_dsn, [Event(event_type="created"), Event(event_type="closed")])
        connect = {"tls": client_tls(ca), "user": "admin", "password": "admin-pw"}
        url = f"tls://127.0.0.1:{server.port}"
        wait_until(
            lambda: set(ids) <= set(stream_ids(url, "OUTBOX", **connect)),
            timeout=20, interval=0.2, message="events never arrived over TLS",
        )
        with psycopg.connect(admin_dsn) as conn:  # the bridge's sessions really are TLS
            rows = conn.execute(
                "SELECT s.ssl, a.backend_type FROM pg_stat_ssl s"
                " JOIN pg_stat_activity a USING (pid) WHERE a.usename = %s",
                (BRIDGE_ROLE,),
            ).fetchall()
        assert rows and all(ssl_used for ssl_used, _ in rows), rows
        assert "walsender" in {backend for _, backend in rows}

        code, output = run_cli(capsys, "check", "--config", config_path)
        assert code == 0, output
        assert "FAIL" not in output and "superuser" not in output, output
    finally:
        server.close()


def test_the_role_alone_cannot_create_the_publication_and_says_who_can(
    tls_pg_server: PostgresServer,
    tls_database: tuple[str, str],
    ca: ThrowawayCA,
    nats_url: str,
    tmp_path: Path,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    database, password = tls_database
    config = bridge_config(
        bridge_role_dsn(tls_pg_server, database, ca.ca), nats_url, unique_name,
        postgres={"password_file": secret_file(tmp_path, "pg-password", password)},
    )
    bridge = make_bridge(config)
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    fatal = parse_json_line(bridge.wait_for_log(log_event("fatal")))
    assert fatal is not None
    assert str(fatal["error"]).startswith(
        f"postgres.publication: publication {unique_name} does not exist, and role "
        f"{BRIDGE_ROLE} may not create it"
    )
    assert "cdc-bridge init" in str(fatal["error"])
    assert not any("Traceback" in line for line in bridge.lines)


def test_a_wrong_postgres_ca_fails_with_one_clear_line(
    tls_pg_server: PostgresServer,
    tls_database: tuple[str, str],
    wrong_ca: ThrowawayCA,
    nats_url: str,
    tmp_path: Path,
    unique_name: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, password = tls_database
    config = bridge_config(
        bridge_role_dsn(tls_pg_server, database, wrong_ca.ca), nats_url, unique_name,
        postgres={"password_file": secret_file(tmp_path, "pg-password", password)},
    )
    bridge = make_bridge(config)
    error = session_failure(bridge, "certificate verify failed")
    assert error.startswith(f"PostgreSQL at 127.0.0.1:{tls_pg_server.port}: ")
    assert "\n" not in error
    assert bridge.running  # waits and retries: the CA may be fixed without a restart

    code, output = run_cli(capsys, "check", "--config", write_config(tmp_path, config))
    assert code == 1
    (line,) = [line for line in output.splitlines() if "postgres.server" in line]
    assert line.startswith("FAIL") and "certificate verify failed" in line


def test_a_wrong_nats_ca_fails_with_one_clear_line(
    pg_dsn: str,
    ca: ThrowawayCA,
    wrong_ca: ThrowawayCA,
    devstack_tmp: Path,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    server = start_nats(devstack_tmp / "nats", tls_block(ca))
    try:
        config = bridge_config(
            pg_dsn, f"tls://127.0.0.1:{server.port}", unique_name,
            nats={"tls": {"ca_file": str(wrong_ca.ca), "cert_file": str(ca.client.cert),
                          "key_file": str(ca.client.key)}},
        )
        bridge = make_bridge(config)
        error = session_failure(bridge, "CERTIFICATE_VERIFY_FAILED")
        assert "\n" not in error and bridge.running
    finally:
        server.close()


def test_a_server_without_tls_is_refused_before_the_password_is_sent(
    pg_dsn: str,
    ca: ThrowawayCA,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    config = bridge_config(
        pg_dsn, isolated_nats_server.url, unique_name,
        nats={"tls": {"ca_file": str(ca.ca)}, "user": "u", "password": "never-sent-1"},
    )
    bridge = make_bridge(config)
    error = session_failure(bridge, "does not require TLS")
    host_port = isolated_nats_server.url.removeprefix("nats://")
    assert error.startswith(f"NATS at {host_port}: NatsTlsRequired: nats.tls is configured")


# --- NKey ---------------------------------------------------------------------------------


def test_nkey_authentication(
    pg_dsn: str, devstack_tmp: Path, tmp_path: Path, unique_name: str, make_bridge: MakeBridge
) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public_key = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    server = start_nats(
        devstack_tmp / "nats",
        "authorization {\n  users = [\n"
        f'    {{ nkey: "{public_key}" }}\n'
        '    { user: admin, password: "admin-pw" }\n  ]\n}\n',
    )
    try:
        config = bridge_config(
            pg_dsn, server.url, unique_name,
            nats={"nkey_seed_file": secret_file(tmp_path, "bridge.nk", seed)},
        )
        bridge = make_bridge(config)
        bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
        ids = insert_events(pg_dsn, [Event()])
        wait_for_ids(server.url.replace("nats://", "nats://admin:admin-pw@"),
                     unique_name.upper(), ids)
        assert all(seed not in line for line in bridge.lines)
    finally:
        server.close()


def test_credentials_file_with_the_documented_permissions(
    pg_dsn: str, devstack_tmp: Path, tmp_path: Path, unique_name: str, make_bridge: MakeBridge
) -> None:
    operator = Operator.new()  # decentralized auth: JWTs, as nsc would make them
    server = start_nats(devstack_tmp / "nats", operator.server_config())
    try:
        publish, subscribe = documented_permissions()
        creds = operator.user_credentials("cdc_bridge", publish=publish, subscribe=subscribe)
        config = bridge_config(
            pg_dsn, server.url, unique_name,
            nats={"creds_file": secret_file(tmp_path, "bridge.creds", creds),
                  "stream": {"name": "OUTBOX", "subjects": ["events.>"]}},
            routes=[{"subject": "events.{aggregate_type}.{event_type}"}],
            dead_letter={"subject": "events.dead"},
        )
        bridge = make_bridge(config)
        bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
        ids = insert_events(pg_dsn, [Event(event_type="created"), Event(event_type="closed")])
        admin = {"user_credentials": RawCredentials(operator.user_credentials("admin"))}
        wait_until(
            lambda: set(ids) <= set(stream_ids(server.url, "OUTBOX", **admin)),
            timeout=20, interval=0.2, message="events never arrived with creds auth",
        )
        seed = creds.split("-----BEGIN USER NKEY SEED-----\n", 1)[1].split("\n", 1)[0]
        assert all(seed not in line for line in bridge.lines)
    finally:
        server.close()


# --- permissions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("publish", "permissions violation for publish to"),
        ("subscribe", "permissions violation for subscription to"),
    ],
)
def test_a_missing_nats_permission_is_a_clear_error_not_a_hang(
    missing: str,
    expected: str,
    pg_dsn: str,
    devstack_tmp: Path,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    stream = unique_name.upper()
    publish = [
        f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}",
        "$JS.API.STREAM.NAMES", f"$JS.API.STREAM.MSG.GET.{stream}",
    ]
    subscribe = ["_INBOX.>"]
    if missing == "publish":
        publish.append("other.>")  # not the stream's subjects
    else:
        publish.append(f"{unique_name}.>")
        subscribe = ["other.>"]  # no inbox: neither acks nor API replies
    permissions = {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
    server = start_nats(
        devstack_tmp / "nats",
        "authorization {\n  users = [\n"
        f"    {{ user: bridge, password: bridge-pw, permissions: {json.dumps(permissions)} }}\n"
        "  ]\n}\n",
    )
    try:
        config = bridge_config(
            pg_dsn, server.url, unique_name, nats={"user": "bridge", "password": "bridge-pw"}
        )
        bridge = make_bridge(config)
        if missing == "publish":  # the session starts; the first event is refused
            bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
            insert_events(pg_dsn, [Event(event_type="created")])
        error = session_failure(bridge, "NATS permissions")
        assert error.startswith(f"NATS at 127.0.0.1:{server.port}: NATS permissions: {expected}")
        assert "\n" not in error and bridge.running
    finally:
        server.close()


# --- redaction ----------------------------------------------------------------------------


def http_get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return str(response.read().decode())


def test_no_password_reaches_any_output(
    pg_server: PostgresServer,
    pg_dsn: str,
    isolated_nats_server: NatsServer,
    tmp_path: Path,
    unique_name: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pg_secret, nats_secret = "PgSecret-4b1d9e", "NatsSecret-8c2f7a"
    # The session server trusts loopback: the password is carried everywhere, never checked.
    dsn = pg_dsn.replace("postgres@", f"postgres:{pg_secret}@")
    nats_url = isolated_nats_server.url.replace("nats://", f"nats://bridge:{nats_secret}@")
    config = bridge_config(dsn, nats_url, unique_name)
    config_path = write_config(tmp_path, config)
    outputs: list[str] = []
    bridges: list[BridgeProcess] = []

    # A running bridge whose NATS goes away: reconnect errors, in the log and /status.
    bridge = make_bridge(config)
    bridges.append(bridge)
    bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
    status_url = bridge.http_url() + "/status"
    outputs.append(http_get(status_url))
    isolated_nats_server.stop()
    session_failure(bridge, "")
    status = http_get(status_url)
    assert json.loads(status)["last_error"]
    outputs.append(status)

    # The ops commands, with the DSN from the config and on the command line.
    for args in (
        ["check", "--config", config_path],
        ["slots", "list", "--config", config_path],
        ["slots", "list", "--dsn", dsn],
        ["slots", "show", unique_name, "--dsn", dsn],
        ["status", "--url", status_url],
        ["init", "--config", config_path, "--dry-run"],
    ):
        outputs.append(run_cli(capsys, *args)[1])

    # Start-up failures: PostgreSQL on a port nobody listens on, and a DSN libpq cannot
    # parse (its errors quote pieces of the string).
    wrong_host = bridge_config(
        dsn.replace(f":{pg_server.port}/", f":{free_port()}/"), nats_url, unique_name
    )
    failing = make_bridge(wrong_host)
    bridges.append(failing)
    session_failure(failing, "PostgreSQL")
    outputs.append(http_get(failing.http_url() + "/status"))
    wrong_path = write_config(tmp_path, wrong_host, "wrong-host.yaml")
    outputs.append(run_cli(capsys, "check", "--config", wrong_path)[1])
    broken = bridge_config(
        f"host=127.0.0.1 password={pg_secret} {pg_secret}x", nats_url, unique_name
    )
    unparsable = make_bridge(broken)
    bridges.append(unparsable)
    assert unparsable.wait_for_exit(STARTUP_TIMEOUT) != 0
    broken_path = write_config(tmp_path, broken, "broken.yaml")
    outputs.append(run_cli(capsys, "check", "--config", broken_path)[1])

    everything = "\n".join(outputs + [line for b in bridges for line in b.lines])
    assert "PostgreSQL" in everything and "NATS" in everything  # the paths were exercised
    assert pg_secret not in everything
    assert nats_secret not in everything


def test_init_says_what_creating_the_stream_needs_when_its_user_may_not(
    pg_dsn: str, devstack_tmp: Path, tmp_path: Path, unique_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The stream is one of init's objects: refused (a NATS user that may not publish to
    $JS.API.STREAM.CREATE.*), its step says what creating it takes and who can."""
    server = start_nats(
        devstack_tmp / "nats",
        "authorization {\n  users = [\n"
        '    { user: bridge, password: "bridge-pw", permissions: {\n'
        '        publish: { allow: [">"], deny: ["$JS.API.STREAM.CREATE.>"] },\n'
        '        subscribe: { allow: [">"] } } }\n  ]\n}\n',
    )
    try:
        config = bridge_config(
            pg_dsn, server.url.replace("nats://", "nats://bridge:bridge-pw@"), unique_name
        )
        capsys.readouterr()
        code = cli_main(["init", "--config", write_config(tmp_path, config), "--json"])
        out, err = capsys.readouterr()
        output = out + err
        stream = unique_name.upper()
        [step] = [step for step in json.loads(out) if step["kind"] == "stream"]
        assert code == 1 and step["action"] == "problem", output
        assert f"$JS.API.STREAM.CREATE.{stream}" in step["detail"]
        assert "bridge-pw" not in output
    finally:
        server.close()
