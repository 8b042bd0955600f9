"""Decentralized NATS auth for the tests: an operator, an account and users as JWTs.

The ``nsc`` tool is not available here, so the JWTs are made the way it makes them
(nats-io/jwt v2): a JSON header and claims, base64url without padding, signed with the
issuer's NKey (ed25519). The server gets them through a MEMORY resolver.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys  # type: ignore[import-untyped]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED_ACCOUNT = {
    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
    "conn": -1, "leaf": -1,
    # JetStream is on for an account whose storage limits are not 0.
    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
}


@dataclass(frozen=True, slots=True)
class NKey:
    seed: str
    public_key: str

    @classmethod
    def new(cls, prefix: int) -> NKey:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        pair = nkeys.from_seed(bytearray(seed))
        return cls(seed=seed.decode(), public_key=pair.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: NKey, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()), "iss": issuer.public_key, "name": name, "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signed = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


@dataclass(frozen=True, slots=True)
class Operator:
    """An operator with one account; ``server_config()`` trusts both."""

    operator: NKey
    account: NKey
    system: NKey  # the system account JetStream needs for its internal subscriptions

    @classmethod
    def new(cls) -> Operator:
        return cls(
            NKey.new(nkeys.PREFIX_BYTE_OPERATOR),
            NKey.new(nkeys.PREFIX_BYTE_ACCOUNT),
            NKey.new(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    def server_config(self) -> str:
        operator_jwt = _jwt(
            self.operator, self.operator.public_key, "test-operator", {"type": "operator"}
        )
        account_jwt = _jwt(
            self.operator, self.account.public_key, "test-account",
            {"type": "account", "limits": _UNLIMITED_ACCOUNT,
             "default_permissions": {"pub": {}, "sub": {}}},
        )
        system_jwt = _jwt(
            self.operator, self.system.public_key, "SYS",
            {"type": "account", "limits": {"subs": -1, "conn": -1, "data": -1, "payload": -1}},
        )
        return (
            f'operator: "{operator_jwt}"\n'
            f"system_account: {self.system.public_key}\n"
            "resolver: MEMORY\n"
            f'resolver_preload: {{\n  {self.account.public_key}: "{account_jwt}"\n'
            f'  {self.system.public_key}: "{system_jwt}"\n}}\n'
        )

    def user_credentials(
        self, name: str, publish: list[str] | None = None, subscribe: list[str] | None = None
    ) -> str:
        """A creds file's text for a new user (no lists: may publish and subscribe anything)."""
        user = NKey.new(nkeys.PREFIX_BYTE_USER)
        permissions: dict[str, Any] = {"pub": {}, "sub": {}}
        if publish is not None:
            permissions["pub"] = {"allow": publish}
        if subscribe is not None:
            permissions["sub"] = {"allow": subscribe}
        user_jwt = _jwt(
            self.account, user.public_key, name,
            {"type": "user", "subs": -1, "data": -1, "payload": -1, **permissions},
        )
        return (
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n"
        )
