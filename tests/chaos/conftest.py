"""Fixtures for the fault-injection scenarios (the servers come from tests/conftest.py)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest
from support.chaos import install_chaos_schema
from support.tcp_proxy import TcpProxy


@pytest.fixture
def chaos_dsn(pg_dsn: str) -> str:
    """A fresh database on the session's PostgreSQL with the outbox and the chaos schema."""
    install_chaos_schema(pg_dsn)
    return pg_dsn


@pytest.fixture
def chaos_seed() -> int:
    """Random moments, but reproducible: CHAOS_SEED=<n> replays a run's choices."""
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    print(f"CHAOS_SEED={seed}")
    return seed


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    """``tcp_proxy(port)`` -> a started TcpProxy to 127.0.0.1:port, closed after the test
    (after the audit too: the bridge must reach the servers until the very end)."""
    made: list[TcpProxy] = []

    def make(upstream_port: int) -> TcpProxy:
        proxy = TcpProxy(upstream_port)
        made.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in made:
        proxy.close()
