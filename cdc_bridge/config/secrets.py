"""Secrets and TLS files named by the config: checked and read while it is loaded.

No secret needs to be written in the YAML: ``${VAR}`` expansion, or a ``*_file`` key
whose file is read here, at start-up. Every problem is a config problem naming its key
(``config.yaml:9: nats.token_file: cannot read /run/secrets/nats: Permission denied``),
and no problem line ever quotes a secret.

Private to cdc_bridge.config.model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cdc_bridge.config.schema import ConfigFile, NatsSection
from cdc_bridge.config.yaml_source import Problems
from cdc_bridge.core.redaction import redact, secrets_in
from cdc_bridge.core.tls import TlsFileError, client_tls_context

_QUOTED_PIECE = re.compile(r'"([^"]*)"')
SEED_MARKER = "-----BEGIN USER NKEY SEED-----"
JWT_MARKER = "-----BEGIN NATS USER JWT-----"
_AUTH_METHODS = {
    "user": "user/password",
    "password": "user/password",
    "password_file": "user/password",
    "token": "token",
    "token_file": "token",
    "nkey_seed_file": "nkey_seed_file",
    "creds_file": "creds_file",
}


@dataclass(frozen=True, slots=True)
class SecretValues:
    postgres_password: str | None = field(default=None, repr=False)
    nats_password: str | None = field(default=None, repr=False)
    nats_token: str | None = field(default=None, repr=False)
    nats_nkey_seed: str | None = field(default=None, repr=False)
    nats_credentials: str | None = field(default=None, repr=False)


def load_secrets(checked: ConfigFile, problems: Problems) -> SecretValues:
    """Read every ``*_file`` key, check the NATS auth keys fit together and the TLS
    files can be used. Problems are added, not raised: the caller raises them all."""
    pg = checked.postgres
    postgres_password = None
    if pg.password_file is not None:
        postgres_password = _read_secret(("postgres", "password_file"), pg.password_file, problems)
        if secrets_in(pg.dsn):
            problems.add(
                ("postgres", "password_file"),
                "postgres.dsn has a password too: keep one of them",
            )
    _check_dsn(pg.dsn, problems)
    if pg.source == "standby" and pg.primary_dsn is None:
        problems.add(
            ("postgres", "source"),
            "a standby source needs postgres.primary_dsn too (the publication and standby "
            "snapshots are made on the primary): add it, or set postgres.source: primary",
        )
    nats = checked.nats
    _check_auth_keys(nats, problems)
    _check_tls(nats, problems)
    password = nats.password
    if nats.password_file is not None:
        password = _read_secret(("nats", "password_file"), nats.password_file, problems)
    token = nats.token
    if nats.token_file is not None:
        token = _read_secret(("nats", "token_file"), nats.token_file, problems)
    seed = None
    if nats.nkey_seed_file is not None:
        seed = _read_secret(("nats", "nkey_seed_file"), nats.nkey_seed_file, problems)
        if seed is not None:
            seed = seed.strip()
            _check_seed(("nats", "nkey_seed_file"), nats.nkey_seed_file, seed, problems)
    credentials = None
    if nats.creds_file is not None:
        credentials = _read_secret(("nats", "creds_file"), nats.creds_file, problems)
        if credentials is not None:
            _check_credentials(nats.creds_file, credentials, problems)
    return SecretValues(
        postgres_password=postgres_password,
        nats_password=password,
        nats_token=token,
        nats_nkey_seed=seed,
        nats_credentials=credentials,
    )


def credentials_seed(credentials: str) -> str | None:
    """The user's NKey seed inside a creds file's text (the line after its marker)."""
    lines = [line.strip() for line in credentials.splitlines()]
    for index, line in enumerate(lines):
        if SEED_MARKER in line:
            following = [candidate for candidate in lines[index + 1 :] if candidate]
            return following[0] if following else None
    return None


def _read_secret(key: tuple[str, str], path: str, problems: Problems) -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problems.add(key, f"cannot read {path}: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        problems.add(key, f"{path} is not UTF-8 text")
        return None
    # Files written by editors, `echo` or secret stores end with a newline that is not
    # part of the secret; anything else in the file is.
    secret = text.rstrip("\r\n")
    if not secret:
        problems.add(key, f"{path} is empty")
        return None
    return secret


def _check_dsn(dsn: str, problems: Problems) -> None:
    """A DSN libpq cannot parse is a config error now, not a driver error later: libpq's
    parse errors quote pieces of the string, which may be pieces of the password."""
    from psycopg import Error as PsycopgError  # psycopg loads only with a config
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except PsycopgError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        # The quoted piece may be half of a password with a space in it: hide them all.
        reason = _QUOTED_PIECE.sub(_hide_quoted, redact(lines[0], secrets_in(dsn)))
        problems.add(("postgres", "dsn"), f"not a valid libpq connection string: {reason}")


def _hide_quoted(piece: re.Match[str]) -> str:
    return piece.group(0) if piece.group(1) == "=" else '"..."'


def _check_auth_keys(nats: NatsSection, problems: Problems) -> None:
    given = [key for key in _AUTH_METHODS if getattr(nats, key) is not None]
    methods = sorted({_AUTH_METHODS[key] for key in given})
    if len(methods) > 1:
        problems.add(
            ("nats",),
            f"choose one way to authenticate to NATS, not {' and '.join(methods)} "
            "(user with password or password_file, token or token_file, nkey_seed_file, "
            "or creds_file)",
        )
    for secret, secret_file in (("password", "password_file"), ("token", "token_file")):
        if secret in given and secret_file in given:
            problems.add(("nats", secret_file), f"give nats.{secret} or {secret_file}, not both")
    has_password = "password" in given or "password_file" in given
    if "user" in given and not has_password:
        problems.add(("nats", "user"), "needs nats.password or nats.password_file")
    if has_password and "user" not in given:
        key = "password" if "password" in given else "password_file"
        problems.add(("nats", key), "needs nats.user (the user the password belongs to)")


def _check_tls(nats: NatsSection, problems: Problems) -> None:
    tls = nats.tls
    if tls is None:
        return
    if tls.key_file is not None and tls.cert_file is None:
        problems.add(("nats", "tls", "key_file"), "needs nats.tls.cert_file (its certificate)")
        return
    try:
        client_tls_context(tls.ca_file, tls.cert_file, tls.key_file)
    except TlsFileError as exc:
        problems.add(("nats", "tls", exc.key), str(exc))


def _check_seed(key: tuple[str, str], path: str, seed: str, problems: Problems) -> None:
    if not seed.startswith("SU"):
        problems.add(key, f"{path} does not hold a user NKey seed (one line starting with SU)")
        return
    try:
        import nkeys  # type: ignore[import-untyped]  # nats-py signs with it
    except ImportError:
        problems.add(key, "NKey authentication needs the nkeys package (pip install nkeys)")
        return
    try:
        nkeys.from_seed(bytearray(seed.encode()))
    except (nkeys.NkeysError, ValueError):  # ValueError: binascii's, for bad base32
        problems.add(key, f"{path} does not hold a valid NKey seed")


def _check_credentials(path: str, credentials: str, problems: Problems) -> None:
    key = ("nats", "creds_file")
    if JWT_MARKER not in credentials or SEED_MARKER not in credentials:
        problems.add(
            key,
            f"{path} is not a NATS credentials file (expected a user JWT and an NKey "
            "seed, as `nsc generate creds` writes them)",
        )
        return
    seed = credentials_seed(credentials)
    if seed is None:
        problems.add(key, f"{path} has no NKey seed after its seed marker")
        return
    _check_seed(key, path, seed, problems)
