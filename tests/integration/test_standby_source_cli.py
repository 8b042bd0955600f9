"""`init` and `slots create` with ``postgres.source: standby`` (PostgreSQL 16+) make what
`run` makes, where `run` makes it: the publication on the primary
(``postgres.primary_dsn``), the slot on the standby (issue 29, left from the last round).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import MakeBridge, log_event
from support.ha import Pair, primary_and_standby, slot_on
from support.outbox import bridge_config

from cdc_bridge.cli.main import main
from cdc_bridge.dev.pginstall import PgInstall

pytestmark = pytest.mark.needs_standby_decoding


@pytest.fixture
def pair(devstack_tmp: Path, pg_install: PgInstall, unique_name: str) -> Iterator[Pair]:
    with primary_and_standby(devstack_tmp, pg_install, f"db_{unique_name}") as both:
        yield both


def standby_config(pair: Pair, nats_url: str, name: str, dsn: str | None = None) -> dict[str, Any]:
    source = {
        "dsn": dsn or pair.standby.dsn(pair.database),
        "source": "standby",
        "primary_dsn": pair.primary.dsn(pair.database),
    }
    return bridge_config(pair.standby.dsn(pair.database), nats_url, name, postgres=source)


def has_publication(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
        return row.fetchone() is not None


def test_init_and_slots_create_make_the_publication_on_the_primary_and_the_slot_on_the_standby(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "standby.yaml"

    def cli(config: dict[str, Any], *args: str) -> tuple[int, str, str]:
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        capsys.readouterr()
        code = main([*args, "--config", str(path)])
        out, err = capsys.readouterr()
        return code, out, err

    config = standby_config(pair, nats_url, unique_name)
    code, out, err = cli(config, "init", "--json")
    assert code == 0, out + err
    steps = {step["kind"]: step for step in json.loads(out)}
    assert [steps[kind]["action"] for kind in ("table", "publication", "slot", "stream")] == [
        "exists",
        "created",
        "created",
        "created",
    ]
    assert f"on the standby 127.0.0.1:{pair.standby.port}" in steps["slot"]["detail"]
    assert has_publication(pair.primary.dsn(pair.database), unique_name)
    assert slot_on(pair.standby, pair.database, unique_name) is not None
    assert slot_on(pair.primary, pair.database, unique_name) is None
    code, out, err = cli(config, "init", "--json")
    assert code == 0, out + err
    assert {step["action"] for step in json.loads(out)} == {"exists"}

    made = f"{unique_name}_made"
    code, out, err = cli(config, "slots", "create", made, "--json")
    assert code == 0, out + err
    assert json.loads(out)["failover"] is False
    assert slot_on(pair.standby, pair.database, made) is not None
    assert slot_on(pair.primary, pair.database, made) is None

    # postgres.dsn at the primary with source: standby: refused in one line, as `run` does
    wrong = standby_config(pair, nats_url, unique_name, dsn=pair.primary.dsn(pair.database))
    other = f"{unique_name}_other"
    code, out, err = cli(wrong, "slots", "create", other)
    assert code == 1
    assert "which is a primary" in err and "postgres.source: primary" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert slot_on(pair.primary, pair.database, other) is None


def test_check_init_and_run_give_the_primarys_wal_level_fix_for_a_standby_source(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_bridge: MakeBridge,
) -> None:
    """The standby decodes, but only what the primary logged at wal_level = logical: the
    standby's own wal_level is logical here, and the fix each command gives is the
    primary's (issue 29, left from the last round)."""
    with psycopg.connect(pair.primary.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_level = replica")
    pair.primary.restart("fast")
    config = standby_config(pair, nats_url, unique_name)
    fix = (
        f"on the primary 127.0.0.1:{pair.primary.port} (postgres.primary_dsn): "
        "ALTER SYSTEM SET wal_level = logical; then restart it"
    )
    path = tmp_path / "standby.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert main(["check", "--config", str(path), "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in results if r["check"] == "postgres.wal_level"] == ["ok"]
    [source] = [r for r in results if r["check"] == "postgres.source"]
    assert source["status"] == "FAIL" and "wal_level = replica on the primary" in source["detail"]
    assert source["fix"] == fix

    assert main(["init", "--config", str(path), "--json"]) == 1
    [slot] = [s for s in json.loads(capsys.readouterr().out) if s["kind"] == "slot"]
    assert slot["action"] == "problem" and "on the primary" in slot["detail"]
    assert slot["sql"] == fix

    bridge = make_bridge(config)
    assert bridge.wait_for_exit(60) == 1
    fatal = [line for line in bridge.lines if log_event("fatal")(line)]
    assert len(fatal) == 1 and f"(fix: {fix})" in fatal[0], bridge.lines
