"""The command table: every command has its file, and only the one being run is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cdc_bridge.cli.main import COMMANDS, build_parser

HEAVY = ("psycopg", "nats", "pydantic", "prometheus_client")
# What `run` imports before its first event: the command, the config, logging, the bridge.
RUN_PATH = (
    "import cdc_bridge.cli.run\n"
    "from cdc_bridge.bridge.logs import configure_logging\n"
    "from cdc_bridge.config.load import load_config\n"
    "from cdc_bridge.bridge.supervisor import install_signal_handlers, run_bridge"
)
# Only some configs or moments use these: the run path imports them where they are used.
ON_DEMAND = (
    "prometheus_client",  # metrics: only when HTTP is on
    "cdc_bridge.bridge.http",
    "cdc_bridge.bridge.initial_snapshot",  # outbox.snapshot_on_create
    "cdc_bridge.source.snapshot",
    "cdc_bridge.bridge.continuous_audit",  # audit.interval
    "cdc_bridge.bridge.audit",
    "cdc_bridge.bridge.recovery",  # postgres.on_slot_lost: recover
    "cdc_bridge.bridge.replay",
    "cdc_bridge.bridge.failover",  # a failover slot
    "cdc_bridge.source.standbys",
    "cdc_bridge.source.standby_source",  # postgres.source: standby
    "cdc_bridge.sink.atomic_publisher",  # one batch publisher, when batches are on
    "cdc_bridge.sink.fast_publisher",
    "cdc_bridge.source.decoding.wal2json",  # postgres.plugin: wal2json
)


def loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


def test_every_command_registers_under_its_name() -> None:
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_top_level_help_loads_no_command() -> None:
    modules = loaded_after("from cdc_bridge.cli.main import build_parser; build_parser(['--help'])")
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert not {m for m in modules if m in {module for module, _ in COMMANDS.values()}}


def test_a_command_loads_only_its_own_file() -> None:
    modules = loaded_after(
        "from cdc_bridge.cli.main import build_parser; build_parser(['status', '--url', 'x'])"
    )
    commands = {module for module, _ in COMMANDS.values()}
    assert modules & commands == {"cdc_bridge.cli.status"}


def test_the_run_path_imports_only_what_every_config_uses() -> None:
    modules = loaded_after(RUN_PATH)
    assert "cdc_bridge.bridge.session" in modules  # the script did import the bridge
    assert not {m for m in modules if m.startswith(tuple(f"{p}." for p in ON_DEMAND))}
    assert not modules & set(ON_DEMAND)
    assert not modules & {module for module, _ in COMMANDS.values()} - {"cdc_bridge.cli.run"}


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser(["slot"]).parse_args(["slot"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'slot'" in capsys.readouterr().err
