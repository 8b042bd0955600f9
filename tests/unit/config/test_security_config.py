"""Secrets and TLS in the config: *_file keys, NATS auth combinations, TLS files, and
the redaction helpers every output boundary uses."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nkeys  # type: ignore[import-untyped]
import pytest
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.client import RawCredentials

from cdc_bridge.bridge.logs import configure_logging
from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.config.problems import ConfigError
from cdc_bridge.core.redaction import Redactor, redact, secrets_in
from cdc_bridge.sink.auth import NatsTlsRequired, connect_options, require_tls
from cdc_bridge.sink.connect import NatsPermissionError, permission_error

BASE = """\
postgres:
  dsn: postgresql://app@127.0.0.1:5432/app
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
routes: [{subject: "events.{event_type}"}]
"""


def with_keys(postgres: str = "", nats: str = "") -> str:
    text = BASE
    if postgres:
        text = text.replace("  dsn: postgresql://app@127.0.0.1:5432/app\n",
                            "  dsn: postgresql://app@127.0.0.1:5432/app\n" + postgres)
    if nats:
        text = text.replace("  servers: [nats://127.0.0.1:4222]\n",
                            "  servers: [nats://127.0.0.1:4222]\n" + nats)
    return text


def parse(text: str, env: dict[str, str] | None = None) -> BridgeConfig:
    return parse_config(text, source="config.yaml", env=env or {})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return caught.value.problems


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def user_seed() -> str:
    return str(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())


# --- *_file keys ------------------------------------------------------------------------


def test_password_files_are_read_at_load_time(tmp_path: Path) -> None:
    pg_file = write(tmp_path / "pg", "pg-secret-1\n")  # the final newline is not part of it
    nats_file = write(tmp_path / "nats", "nats-secret-2")
    config = parse(with_keys(
        postgres=f"  password_file: {pg_file}\n",
        nats=f"  user: bridge\n  password_file: {nats_file}\n",
    ))
    assert config.postgres.password == "pg-secret-1"
    assert config.postgres.dsn == "postgresql://app@127.0.0.1:5432/app"  # never merged in
    assert (config.nats.auth.user, config.nats.auth.password) == ("bridge", "nats-secret-2")
    assert config.nats.auth.method == "user/password"
    assert "pg-secret-1" not in repr(config) and "nats-secret-2" not in repr(config)
    assert {"pg-secret-1", "nats-secret-2"} <= config.secrets()


def test_secrets_written_in_the_file_stay_out_of_reprs() -> None:
    """The sections are the values: the keys holding a secret are fields of them, and
    no repr (a traceback, a debug line) may show one."""
    text = with_keys(nats="  user: bridge\n  password: nats-secret-3\n").replace(
        "postgresql://app@", "postgresql://app:pg-secret-4@"
    )
    config = parse(text)
    token = parse(with_keys(nats="  token: t0ken-lit\n"))
    for shown in (repr(config), str(config), repr(config.nats), repr(token), str(token.nats)):
        assert "nats-secret-3" not in shown and "pg-secret-4" not in shown
        assert "t0ken-lit" not in shown
    assert config.nats.password == config.nats.auth.password == "nats-secret-3"
    assert {"nats-secret-3", "pg-secret-4"} <= config.secrets()


def test_token_from_environment_or_file(tmp_path: Path) -> None:
    from_env = parse(with_keys(nats="  token: ${NATS_TOKEN}\n"), env={"NATS_TOKEN": "t0ken-env"})
    assert from_env.nats.auth.token == "t0ken-env" and from_env.nats.auth.method == "token"
    token_file = write(tmp_path / "token", "t0ken-file\n")
    from_file = parse(with_keys(nats=f"  token_file: {token_file}\n"))
    assert from_file.nats.auth.token == "t0ken-file"


def test_unreadable_files_are_one_line_each_naming_the_key(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", "\n")
    found = problems(with_keys(
        postgres=f"  password_file: {tmp_path}/missing\n",
        nats=f"  token_file: {empty}\n",
    ))
    assert found == [
        f"config.yaml:3: postgres.password_file: cannot read {tmp_path}/missing: "
        "No such file or directory",
        f"config.yaml:6: nats.token_file: {empty} is empty",
    ]


def test_password_file_with_a_password_in_the_dsn_is_ambiguous(tmp_path: Path) -> None:
    text = with_keys(postgres=f"  password_file: {write(tmp_path / 'pw', 'file-pw')}\n")
    text = text.replace("postgresql://app@", "postgresql://app:dsn-pw@")
    (problem,) = problems(text)
    assert "postgres.password_file: postgres.dsn has a password too" in problem
    assert "dsn-pw" not in problem and "file-pw" not in problem


def test_a_dsn_libpq_cannot_parse_is_a_config_error_without_its_pieces() -> None:
    text = BASE.replace(
        "dsn: postgresql://app@127.0.0.1:5432/app", "dsn: host=db password=hunter2 two"
    )
    (problem,) = problems(text)
    assert problem.startswith("config.yaml:2: postgres.dsn: not a valid libpq connection string")
    assert "hunter2" not in problem and "two" not in problem


# --- NATS auth combinations -------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("  user: u\n", "nats.user: needs nats.password or nats.password_file"),
        ("  password: p4ssword\n", "nats.password: needs nats.user"),
        ("  user: u\n  password: p4ssword\n  token: t0ken\n",
         "nats: choose one way to authenticate to NATS, not token and user/password"),
        ("  token: t0ken\n  token_file: /x\n", "nats.token_file: give nats.token or token_file"),
    ],
)
def test_auth_keys_must_fit_together(keys: str, expected: str) -> None:
    found = problems(with_keys(nats=keys))
    assert any(expected in problem for problem in found), found
    assert not any("p4ssword" in p or "t0ken" in p for p in found)


def test_nkey_seed_file_is_checked(tmp_path: Path) -> None:
    seed = user_seed()
    seed_file = write(tmp_path / "seed", seed + "\n")
    config = parse(with_keys(nats=f"  nkey_seed_file: {seed_file}\n"))
    assert config.nats.auth.nkey_seed == seed and config.nats.auth.method == "nkey"
    assert seed in config.secrets()
    (problem,) = problems(with_keys(nats=f"  nkey_seed_file: {write(tmp_path / 'bad', 'SUX')}\n"))
    assert "nats.nkey_seed_file:" in problem and "not hold a valid NKey seed" in problem
    assert "SUX" not in problem


def test_creds_file_is_checked(tmp_path: Path) -> None:
    seed = user_seed()
    creds = (
        "-----BEGIN NATS USER JWT-----\neyJhbGciOi.x.y\n------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n" + seed + "\n------END USER NKEY SEED------\n"
    )
    config = parse(with_keys(nats=f"  creds_file: {write(tmp_path / 'c', creds)}\n"))
    assert config.nats.auth.method == "creds" and seed in config.secrets()
    (problem,) = problems(with_keys(nats=f"  creds_file: {write(tmp_path / 'd', 'nope')}\n"))
    assert "nats.creds_file:" in problem and "not a NATS credentials file" in problem


def test_connect_options_carry_one_method() -> None:
    client = NatsClient()
    plain = parse(with_keys(nats="  user: u\n  password: pw-1234\n")).nats
    assert connect_options(plain, client) == {"user": "u", "password": "pw-1234"}
    assert connect_options(parse(BASE).nats, client) == {}


def test_connect_options_for_creds_pass_the_text_read_at_start(tmp_path: Path) -> None:
    seed = user_seed()
    creds = f"-----BEGIN NATS USER JWT-----\na.b.c\n-----BEGIN USER NKEY SEED-----\n{seed}\n"
    nats = parse(with_keys(nats=f"  creds_file: {write(tmp_path / 'c', creds)}\n")).nats
    options = connect_options(nats, NatsClient())
    assert isinstance(options["user_credentials"], RawCredentials)
    assert str(options["user_credentials"]) == creds.rstrip("\n")


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "client.key", folder / "client.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=t"],
        check=True, capture_output=True,
    )
    return {"key": str(key), "cert": str(cert), "dir": str(folder)}


def test_tls_files_build_a_verifying_context(tls_files: dict[str, str]) -> None:
    nats = parse(with_keys(nats=(
        f"  tls: {{ca_file: {tls_files['cert']}, cert_file: {tls_files['cert']}, "
        f"key_file: {tls_files['key']}}}\n"
    ))).nats
    assert nats.tls is not None and nats.tls.ca_file == tls_files["cert"]
    context = connect_options(nats, NatsClient())["tls"]
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"


def test_tls_file_problems_name_the_key(tls_files: dict[str, str]) -> None:
    missing = problems(with_keys(nats=f"  tls: {{ca_file: {tls_files['dir']}/none.pem}}\n"))
    assert missing == [
        f"config.yaml:5: nats.tls.ca_file: cannot read {tls_files['dir']}/none.pem: "
        "No such file or directory"
    ]
    not_a_cert = problems(with_keys(nats=f"  tls: {{ca_file: {tls_files['key']}}}\n"))
    assert len(not_a_cert) == 1 and "nats.tls.ca_file: cannot use" in not_a_cert[0]
    mismatched = problems(with_keys(nats=f"  tls: {{cert_file: {tls_files['key']}}}\n"))
    assert len(mismatched) == 1 and "nats.tls.cert_file: cannot use" in mismatched[0]
    lone_key = problems(with_keys(nats=f"  tls: {{key_file: {tls_files['key']}}}\n"))
    assert lone_key == [
        "config.yaml:5: nats.tls.key_file: needs nats.tls.cert_file (its certificate)"
    ]


def test_secrets_wait_for_tls_when_tls_is_configured(tls_files: dict[str, str]) -> None:
    nats = parse(with_keys(nats=(
        f"  tls: {{ca_file: {tls_files['cert']}}}\n  user: u\n  password: pw-1234\n"
    ))).nats
    client = NatsClient()
    password = connect_options(nats, client)["password"]
    assert callable(password)
    client._server_info = {"tls_required": False}  # what a plain-text server's INFO says
    with pytest.raises(NatsTlsRequired):
        password()
    with pytest.raises(NatsTlsRequired):
        require_tls(nats, client)
    client._server_info = {"tls_required": True}
    assert password() == "pw-1234"
    require_tls(nats, client)


# --- permissions violations ---------------------------------------------------------------


def test_permissions_violation_becomes_one_clear_error() -> None:
    import nats.errors

    raw = nats.errors.Error('nats: Permissions Violation for Publish to "orders.created"')
    denied = permission_error(raw)
    assert isinstance(denied, NatsPermissionError)
    assert str(denied).startswith(
        'NATS permissions: Permissions Violation for Publish to "orders.created"'
    )
    assert permission_error(nats.errors.Error("nats: 'Authorization Violation'")) is None


# --- redaction ---------------------------------------------------------------------------


def test_secrets_in_dsns_and_urls() -> None:
    assert secrets_in("postgresql://u:p%40ss@h/db?sslpassword=k3y5") == {"p%40ss", "p@ss", "k3y5"}
    assert secrets_in("host=h password='a b\\'c' user=u") == {"a b'c"}
    assert secrets_in("nats://t0ken@h:4222") == {"t0ken"}
    assert secrets_in("nats://h:4222") == set()


def test_redact_masks_known_literals_and_patterns() -> None:
    text = 'bad "hunter22" near postgresql://u:pw@h and password=zz and nats://tok@h'
    assert redact(text, {"hunter22"}) == (
        'bad "***" near postgresql://u:***@h and password=*** and nats://***@h'
    )
    assert redact("ab abc", {"ab"}) == "ab abc"  # too short to be masked as a literal
    assert "hunter22" not in repr(Redactor(frozenset({"hunter22"})))


def test_status_errors_are_redacted() -> None:
    status = BridgeStatus(slot="s", stream="S", redactor=Redactor(frozenset({"s3cr3t-pw"})))
    status.failed('PostgreSQL: missing "=" after "s3cr3t-pw" at postgresql://u:x@h')
    assert status.to_json()["last_error"] == 'PostgreSQL: missing "=" after "***" at postgresql://u:***@h'


@pytest.mark.usefixtures("restore_logging")  # its handler writes to the captured stderr
def test_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", redactor=Redactor(frozenset({"s3cr3t-pw"})))
    structlog.get_logger("test").warning(
        "session_failed", error="auth s3cr3t-pw failed", servers=["nats://u:pw@h"]
    )
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["error"] == "auth *** failed"
    assert record["servers"] == ["nats://u:***@h"]


def test_a_tls_url_also_requires_tls() -> None:
    nats = parse(
        with_keys(nats="  token: t0ken-1234\n").replace("nats://127.0.0.1", "tls://127.0.0.1")
    ).nats
    client = NatsClient()
    token = connect_options(nats, client)["token"]
    client._server_info = {"tls_required": False}
    with pytest.raises(NatsTlsRequired):
        token()
    with pytest.raises(NatsTlsRequired):
        require_tls(nats, client)
    require_tls(parse(BASE).nats, client)  # plain nats:// without nats.tls: as asked
