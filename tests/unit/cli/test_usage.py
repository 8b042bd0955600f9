"""Usage errors come from the subcommand that was given, with its own usage line."""

from __future__ import annotations

import argparse

import pytest

from cdc_bridge.cli.main import build_parser, main

# The least each command accepts; one entry per command (checked below).
VALID = {
    "run": ["--config", "c.yaml"],
    "dev": [],
    "routes test": ["--config", "c.yaml", "--row", "{}"],
    "slots list": ["--dsn", "x"],
    "slots show": ["s", "--dsn", "x"],
    "slots create": ["s", "--dsn", "x"],
    "slots drop": ["s", "--dsn", "x"],
    "slots peek": ["s", "--dsn", "x"],
    "slots advance": ["s", "--dsn", "x", "--to", "0/1"],
    "check": ["--config", "c.yaml"],
    "init": ["--config", "c.yaml"],
    "status": ["--url", "http://127.0.0.1:1/status"],
    "outbox prune": ["--config", "c.yaml", "--older-than", "7d"],
    "outbox replay": ["--config", "c.yaml", "--missing"],
    "inbox prune": ["--stream", "S", "--consumer", "c"],
    "audit": ["--config", "c.yaml"],
    "snapshot": ["--config", "c.yaml", "--table", "public.t"],
}


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every runnable command, nested ones as "slots list"."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                nested = commands(sub, path)
                found.extend(nested or [path])
    return found


def test_every_command_is_covered() -> None:
    assert sorted(commands(build_parser())) == sorted(VALID)


@pytest.mark.parametrize("command", sorted(VALID))
def test_an_unknown_flag_shows_the_commands_own_usage(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build_parser().parse_args([*command.split(), *VALID[command]])  # accepted as is
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), *VALID[command], "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: cdc-bridge {command} ")
    assert err.endswith(f"cdc-bridge {command}: error: unrecognized arguments: --bogus\n")


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("check", "--config FILE [--dsn DSN]"),
        ("init", "--config FILE [--dsn DSN]"),
        ("status", "(--config FILE | --url URL)"),
        ("run", "--config FILE"),
    ],
)
def test_help_shows_config_as_required_where_it_is(
    command: str, usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    first = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage in first


@pytest.mark.parametrize("command", ["check", "init", "status"])
def test_a_missing_config_is_a_usage_error_of_the_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: cdc-bridge {command} ")
    assert f"cdc-bridge {command}: error:" in err and "--config" in err
