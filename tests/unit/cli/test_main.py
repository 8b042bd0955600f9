"""The command table: every command has its file, and only the one being run is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cdc_bridge.cli.main import COMMANDS, build_parser

HEAVY = ("psycopg", "nats", "pydantic", "prometheus_client")


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


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser(["slot"]).parse_args(["slot"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'slot'" in capsys.readouterr().err
