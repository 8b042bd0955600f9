"""``--older-than`` ages for ``cdc-bridge outbox prune``."""

from __future__ import annotations

import pytest

from cdc_bridge.cli.main import build_parser
from cdc_bridge.cli.outbox import parse_age


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86_400.0),
        ("0.5d", 43_200.0),
        ("12h", 43_200.0),
        ("30m", 1_800.0),
        ("90s", 90.0),
        ("1d12h", 129_600.0),
        ("2d30m15s", 2 * 86_400.0 + 1_815.0),
        (" 7d ", 7 * 86_400.0),
        ("0s", 0.0),
    ],
)
def test_ages_with_units(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "1d7", "d", "-1d", "7 days", "12h1d", "1w", "7D"])
def test_ages_without_a_usable_unit_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an age"):
        parse_age(text)


def test_the_command_line_takes_an_age_and_a_batch_size() -> None:
    args = build_parser().parse_args(
        ["outbox", "prune", "--config", "c.yaml", "--older-than", "36h", "--batch-size", "500"]
    )
    assert (args.older_than, args.batch_size, args.dry_run) == (129_600.0, 500, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--older-than", "7"],
        ["--older-than", "7d", "--batch-size", "0"],
        ["--older-than", "7d", "--batch-size", "many"],
        [],
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["outbox", "prune", "--config", "c.yaml", *argv])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
