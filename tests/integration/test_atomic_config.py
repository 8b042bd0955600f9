"""Atomic mode's configuration against real servers (issue 30): the stream the bridge
creates allows atomic batches unless nats.stream.allow_atomic says no, an existing stream
is left as it is, and `cdc-bridge check` reports the decision `run` makes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.js.api import StreamConfig
from support.outbox import bridge_config

from cdc_bridge.bridge.logs import configure_logging
from cdc_bridge.cli.main import main as cli_main
from cdc_bridge.config.load import parse_config
from cdc_bridge.core.errors import FatalError
from cdc_bridge.dev.nats_server import NATS_SERVER_ENV, NatsServer
from cdc_bridge.sink.atomic_mode import decide_atomic_mode
from cdc_bridge.sink.connect import ensure_stream


def stream_allow_atomic(url: str, config: dict[str, Any], *, create: bool = True) -> bool | None:
    """``ensure_stream`` with this config (when ``create``), then the stream's allow_atomic
    as the server reports it."""

    # As the ops commands run it (cli/errors.py): the daemon's info lines stay unwritten.
    # structlog caches each module's logger at its first use, with the file configured
    # then; an info line cached here would be written later to a test's closed capsys.
    configure_logging("console", "warning")

    async def main() -> bool | None:
        nats_config = parse_config(yaml.safe_dump(config), env={}).nats
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            if create:
                await ensure_stream(nc, nats_config)
            info = await nc.jsm().stream_info(nats_config.stream.name)
            return info.config.allow_atomic
        finally:
            await nc.close()

    return asyncio.run(main())


def add_stream(url: str, name: str, subjects: list[str], allow_atomic: bool) -> None:
    async def main() -> None:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            config = StreamConfig(name=name, subjects=subjects, allow_atomic=allow_atomic)
            await nc.jsm().add_stream(config)
        finally:
            await nc.close()

    asyncio.run(main())


def atomic_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config: dict[str, Any]
) -> dict[str, Any]:
    """`cdc-bridge check --json`'s nats.atomic_transactions result for this config."""
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    code = cli_main(["check", "--config", str(path), "--json"])
    results = json.loads(capsys.readouterr().out)
    [result] = [r for r in results if r["check"] == "nats.atomic_transactions"]
    if result["status"] == "FAIL":
        assert code == 1
    return dict(result)


@pytest.mark.parametrize("allow_atomic", [None, True, False])
def test_the_stream_the_bridge_creates_allows_atomic_batches_unless_configured_not_to(
    nats_url: str, pg_dsn: str, unique_name: str, allow_atomic: bool | None
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    if allow_atomic is not None:
        config["nats"]["stream"]["allow_atomic"] = allow_atomic
    expected = True if allow_atomic is None else allow_atomic  # the default: true
    assert bool(stream_allow_atomic(nats_url, config)) is expected


@pytest.mark.parametrize("existing", [True, False])
def test_an_existing_stream_keeps_its_allow_atomic(
    nats_url: str, pg_dsn: str, unique_name: str, existing: bool
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    config["nats"]["stream"]["allow_atomic"] = not existing
    add_stream(nats_url, unique_name.upper(), [f"{unique_name}.>"], existing)
    assert bool(stream_allow_atomic(nats_url, config)) is existing


def test_check_reports_atomic_transactions_on_for_the_stream_the_bridge_will_create(
    nats_url: str,
    pg_dsn: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    stream = unique_name.upper()
    result = atomic_check(capsys, tmp_path, config)
    assert result["status"] == "ok"
    assert re.fullmatch(
        rf"atomic transactions: on: nats-server 2\.\d+\.\d+ and stream {stream} \(created "
        r"with allow_atomic\) allow atomic batches",
        result["detail"],
    ), result
    config["nats"]["stream"]["allow_atomic"] = False
    result = atomic_check(capsys, tmp_path, config)
    assert result["status"] == "ok"
    assert result["detail"].startswith(
        f"atomic transactions: off: stream {stream} is to be created with "
        "nats.stream.allow_atomic false: set nats.stream.allow_atomic: true"
    )
    # Once the stream exists, the stream as it is counts (created as the bridge would:
    # not by ensure_stream here, whose log line would keep capsys's stream past the test).
    add_stream(nats_url, stream, [f"{unique_name}.>"], allow_atomic=True)
    result = atomic_check(capsys, tmp_path, config)
    assert result["status"] == "ok" and result["detail"].startswith("atomic transactions: on: ")
    assert "created with" not in result["detail"]


def test_check_fails_atomic_transactions_true_on_a_stream_without_allow_atomic(
    nats_url: str,
    pg_dsn: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = unique_name.upper()
    add_stream(nats_url, stream, [f"{unique_name}.>"], allow_atomic=False)
    config = bridge_config(pg_dsn, nats_url, unique_name)
    config["nats"]["stream"]["allow_atomic"] = True  # not applied: the stream exists

    config["nats"]["atomic_transactions"] = "auto"
    result = atomic_check(capsys, tmp_path, config)
    assert result["status"] == "ok"
    assert result["detail"].startswith(
        f"atomic transactions: off: stream {stream} has allow_atomic off: "
    )

    config["nats"]["atomic_transactions"] = True
    result = atomic_check(capsys, tmp_path, config)
    # The line `run` stops with: the same function decides.
    with pytest.raises(FatalError) as caught:
        decide_atomic_mode(True, (2, 12, 0), stream, False)
    assert result == {
        "check": "nats.atomic_transactions",
        "status": "FAIL",
        "detail": str(caught.value),
        "fix": None,
    }

    config["nats"]["atomic_transactions"] = False
    result = atomic_check(capsys, tmp_path, config)
    assert result["status"] == "ok"
    assert result["detail"] == "atomic transactions: off: nats.atomic_transactions is false"


def _old_nats_server() -> Path | None:
    """A nats-server before 2.12 installed on this machine (the system's), if any."""
    for candidate in (Path("/usr/sbin/nats-server"), Path("/usr/bin/nats-server")):
        if not candidate.is_file():
            continue
        shown = subprocess.run(
            [str(candidate), "--version"], capture_output=True, text=True, check=False
        ).stdout
        found = re.search(r"v(\d+)\.(\d+)\.(\d+)", shown)
        if found and tuple(map(int, found.groups())) < (2, 12, 0):
            return candidate
    return None


@pytest.fixture
def old_nats_server(devstack_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsServer]:
    binary = _old_nats_server()
    if binary is None:
        pytest.skip("no nats-server before 2.12 installed")
    monkeypatch.setenv(NATS_SERVER_ENV, str(binary))
    with NatsServer(devstack_tmp / "old-nats") as server:
        yield server


def test_a_server_before_2_12_takes_the_stream_the_bridge_creates(
    old_nats_server: NatsServer, pg_dsn: str, unique_name: str
) -> None:
    config = bridge_config(pg_dsn, old_nats_server.url, unique_name)
    # allow_atomic is sent, and an old server ignores it: the stream is created all the same.
    assert stream_allow_atomic(old_nats_server.url, config) is None


def test_check_on_a_server_before_2_12_names_its_version(
    old_nats_server: NatsServer,
    pg_dsn: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = bridge_config(pg_dsn, old_nats_server.url, unique_name)
    add_stream(old_nats_server.url, unique_name.upper(), [f"{unique_name}.>"], True)
    result = atomic_check(capsys, tmp_path, config)
    assert result["status"] == "ok"
    assert re.match(
        r"atomic transactions: off: nats-server 2\.\d+\.\d+ has no atomic batches \(2\.12\+ "
        r"needed\): upgrade the NATS servers",
        result["detail"],
    ), result
    config["nats"]["atomic_transactions"] = "true"
    result = atomic_check(capsys, tmp_path, config)
    assert result["status"] == "FAIL"
    assert re.fullmatch(
        r"nats-server 2\.\d+\.\d+ has no atomic batches \(2\.12\+ needed\), and "
        r"nats.atomic_transactions is true: upgrade the NATS servers, or set "
        r"nats.atomic_transactions: auto \(atomic batches where they can be had\) or false",
        result["detail"],
    ), result
