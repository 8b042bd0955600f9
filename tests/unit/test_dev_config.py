"""`cdc-bridge dev` needs no checkout: its config ships in the package (issue 29 item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import paths

from cdc_bridge.cli.dev import dev_config_text
from cdc_bridge.cli.main import main


def test_the_packaged_dev_config_is_config_dev_yaml() -> None:
    assert dev_config_text() == (paths.REPO / "config" / "dev.yaml").read_text(encoding="utf-8")


def test_an_unreadable_config_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # outside the checkout, as after a pip install
    code = main(["dev", "--dir", "stack", "--config", "config/dev.yaml"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "config/dev.yaml: cannot read the config file" in err
    assert "nothing was started" in err and "Traceback" not in err
    assert "starting" not in out
    assert list(tmp_path.iterdir()) == []  # no ./stack, no servers
