"""Installing cdc-bridge outside the repository, as the README's Install section says.

The wheel is built from exactly what the Dockerfile copies (pyproject.toml, setup.py,
README.md, cdc_bridge/), pure Python as in the image (which has no C compiler; here
CDC_BRIDGE_COMPILE=0 says it, and saves the mypyc build's half a minute), installed with
its dependencies into a fresh virtualenv that cannot see the project's own (no system
site-packages, no editable install), and run from a folder outside the repository
against the session's PostgreSQL and nats-server. The installed ``init``
must find sql/outbox.sql in the package, not in a checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import yaml
from support.bridge import REPO_ROOT

from cdc_bridge import __version__
from cdc_bridge.dev.postgres_server import PostgresServer

PIP_TIMEOUT = 240  # a cold pip cache downloads every dependency once


def _clean_env() -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["CDC_BRIDGE_COMPILE"] = "0"
    return env


def _run(command: list[str | Path], cwd: Path, timeout: float = 60) -> str:
    env = _clean_env()
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def build_wheel(work: Path) -> Path:
    """The wheel of what the Dockerfile copies into its image (see .dockerignore)."""
    source = work / "source"
    shutil.copytree(
        REPO_ROOT / "cdc_bridge",
        source / "cdc_bridge",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"),
    )
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    dist = work / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source],
        cwd=work,
        timeout=PIP_TIMEOUT,
    )
    [wheel] = dist.glob("cdc_bridge-*.whl")
    return wheel


def test_the_wheel_installs_into_a_fresh_venv_and_runs_outside_the_repo(
    pg_server: PostgresServer, nats_url: str, unique_name: str, tmp_path: Path, devstack_tmp: Path
) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "cdc_bridge/py.typed", "cdc_bridge/sql/outbox.sql", "cdc_bridge/cli/main.py",
        "cdc_bridge/dev/dev.yaml",  # `cdc-bridge dev` needs no checkout
    } <= names  # fmt: skip
    assert not any(name.startswith(("tests/", "bench/", "examples/")) for name in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    _run([venv / "bin" / "pip", "install", "-q", wheel], cwd=tmp_path, timeout=PIP_TIMEOUT)
    elsewhere = tmp_path / "elsewhere"  # neither the repo nor the wheel's folder
    elsewhere.mkdir()
    imported = _run(
        [venv / "bin" / "python", "-c", "import cdc_bridge; print(cdc_bridge.__file__)"],
        cwd=elsewhere,
    )
    assert Path(imported.strip()).is_relative_to(venv)
    cli = venv / "bin" / "cdc-bridge"
    version = _run([cli, "--version"], cwd=elsewhere).strip()
    assert version == f"cdc-bridge {__version__}, pure Python"

    database = f"db_{unique_name}"
    dsn = pg_server.create_database(database, outbox_schema=False)  # init must create it
    try:
        config = {
            "postgres": {"dsn": dsn, "slot": unique_name, "publication": unique_name},
            "nats": {"servers": [nats_url], "stream": {"name": "OUTBOX", "subjects": ["events.>"]}},
            "outbox": {"table": "public.outbox"},
            "routes": [{"subject": "events.{aggregate_type}"}],
        }
        config_path = elsewhere / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        init = _run([cli, "init", "--config", config_path], cwd=elsewhere)
        assert "from sql/outbox.sql" in init
        _run([cli, "check", "--config", config_path], cwd=elsewhere)
    finally:
        pg_server.drop_database(database)

    # `cdc-bridge dev` outside the checkout (in a folder the postgres account can reach):
    # its servers in ./.devstack (the system's PostgreSQL and nats-server: the fresh venv
    # has no dev extra), streaming with the packaged config.
    lines = dev_until_streaming(cli, devstack_tmp)
    assert not any("cannot read the config file" in line for line in lines), lines
    assert (devstack_tmp / ".devstack").is_dir()


def dev_until_streaming(cli: Path, cwd: Path, timeout: float = 120) -> list[str]:
    """Run `cdc-bridge dev` until its bridge streams, then stop it with Ctrl-C (exit 0)."""
    process = subprocess.Popen(
        [str(cli), "dev", "--log-format", "json"],
        cwd=cwd,
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(timeout, process.kill)  # a hang fails, never blocks
    watchdog.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if '"event": "streaming"' in line:
                break
        else:
            raise AssertionError(f"cdc-bridge dev exited {process.wait()}:\n{''.join(lines)}")
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        lines += rest.splitlines(keepends=True)
        assert process.returncode == 0, "".join(lines)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return lines
