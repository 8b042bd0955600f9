"""Fixtures for the fault-injection scenarios (the servers come from tests/conftest.py)."""

from __future__ import annotations

import os
import random

import pytest
from support.chaos import install_chaos_schema


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
