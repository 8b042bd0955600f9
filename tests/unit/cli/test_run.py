"""``cdc-bridge run`` before the bridge starts: the collector is off only while starting."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from cdc_bridge.cli.main import main


def test_a_bad_config_leaves_the_collector_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("postgres: {}\n", encoding="utf-8")
    assert gc.isenabled()
    assert main(["run", "--config", str(config)]) == 1
    assert gc.isenabled()  # off while loading (run_command), on again whatever happened
    assert "invalid configuration" in capsys.readouterr().err


def test_an_unreadable_config_leaves_the_collector_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert gc.isenabled()
    assert "cannot read" in capsys.readouterr().err
