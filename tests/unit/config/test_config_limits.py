"""Hostile configs (issue 27, items 14 and 15): a file beyond the limits of limits.py is
refused in one line naming the limit, before it can use up the machine."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from cdc_bridge.cli.main import main
from cdc_bridge.config.limits import MAX_DEPTH, MAX_ROUTES
from cdc_bridge.config.load import load_config, parse_config
from cdc_bridge.config.problems import ConfigError

BASE = """\
postgres:
  dsn: postgresql://app@127.0.0.1:5432/app
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
"""
ROUTE = '  - subject: "events.{event_type}"\n'

TOO_MANY_VALUES = (
    "config.yaml: the file expands to more than 250,000 values, the limit for a config "
    "file (each YAML alias counts its anchor's values again): use fewer aliases, or fewer "
    "routes"
)


def one_problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="config.yaml", env={})
    assert len(caught.value.problems) == 1, caught.value.problems
    return caught.value.problems[0]


def alias_bomb(levels: int, references: int = 10) -> str:
    """``a<n>`` lists ``a<n-1>`` ten times: ten levels are 10**9 strings once expanded."""
    anchors = ['  a0: &a0 ["lol"]']
    for level in range(1, levels):
        listed = ", ".join([f"*a{level - 1}"] * references)
        anchors.append(f"  a{level}: &a{level} [{listed}]")
    return BASE + "x-bomb:\n" + "\n".join(anchors) + "\nroutes:\n" + ROUTE


def merge_bomb(levels: int, references: int = 10) -> str:
    """The same with merge keys: each level copies the pairs of the one below ten times."""
    anchors = ["  m0: &m0 {lol: lol}"]
    for level in range(1, levels):
        merged = ", ".join([f"*m{level - 1}"] * references)
        anchors.append(f"  m{level}: &m{level} {{<<: [{merged}]}}")
    return BASE + "x-bomb:\n" + "\n".join(anchors) + "\nroutes:\n" + ROUTE


def nested_lists(levels: int) -> str:
    """``x:`` holding lists nested so that the document is ``levels`` deep (the root
    mapping is one level, the outermost list under x the second)."""
    lists = levels - 1
    return BASE + "x: " + "[" * lists + "]" * lists + "\nroutes:\n" + ROUTE


# --- aliases and merge keys ------------------------------------------------------------


def test_an_alias_bomb_stops_at_the_limit_in_one_line() -> None:
    tracemalloc.start()
    try:
        problem = one_problem(alias_bomb(10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problem == TOO_MANY_VALUES
    # Stopped at the limit, not after expanding the billion values: about what a file
    # of 250,000 values written out costs.
    assert peak < 100 * 1024 * 1024


def test_a_merge_key_bomb_is_read_within_the_limit() -> None:
    # PyYAML without yaml/pyyaml#937 copies a merged mapping's pairs once per reference,
    # and the loader refuses the copies beyond the limit; with it, each key is merged
    # once and the bomb reads as the few values it is (x-bomb then an unknown key).
    problem = one_problem(merge_bomb(10))
    assert problem in (TOO_MANY_VALUES, "config.yaml:6: x-bomb: unknown key 'x-bomb'")


def test_aliases_and_merge_keys_within_the_limit_still_load() -> None:
    text = BASE + (
        "routes:\n"
        "  - &route {when: {aggregate_type: a}, subject: 'events.{event_type}', payload: body}\n"
        "  - <<: *route\n    when: {aggregate_type: b}\n"
        "  - *route\n"
    )
    config = parse_config(text, env={})
    assert [route.payload for route in config.routes] == ["body"] * 3
    assert [route.when for route in config.routes][1] == (("aggregate_type", ("b",)),)


# --- nesting ---------------------------------------------------------------------------


def test_nesting_up_to_the_limit_is_read() -> None:
    problem = one_problem(nested_lists(MAX_DEPTH))
    assert problem == "config.yaml:6: x: unknown key 'x'"


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 100_000])  # 100,000: a RecursionError
def test_deeper_nesting_is_refused_in_one_line(levels: int) -> None:
    assert one_problem(nested_lists(levels)) == (
        "config.yaml:6: values nested more than 64 levels deep, the limit for a config "
        "file (counting what YAML aliases expand to): flatten the structure"
    )


def test_nesting_made_by_aliases_counts_too() -> None:
    # Each anchor is shallow in the file; expanded, the last is 70 lists deep.
    anchors = ["  d0: &d0 []"] + [f"  d{n}: &d{n} [*d{n - 1}]" for n in range(1, 70)]
    text = BASE + "x:\n" + "\n".join(anchors) + "\nroutes:\n" + ROUTE
    assert one_problem(text).startswith("config.yaml:7: values nested more than 64 levels")


# --- the file's size -------------------------------------------------------------------

TOO_LARGE = "the file is over the 4 MiB limit for a config file: is it the right file?"


def test_a_file_over_the_size_limit_is_refused_before_parsing() -> None:
    # Bytes, not characters: 2.2 million two-byte characters are 4.4 MB of UTF-8.
    text = BASE + "routes:\n" + ROUTE + "# " + "é" * 2_200_000 + "\n"
    assert one_problem(text) == f"config.yaml: {TOO_LARGE}"


def test_load_config_reads_no_more_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + "routes:\n" + ROUTE + "# " + "x" * (5 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == [f"{path}: {TOO_LARGE}"]


# --- routes ----------------------------------------------------------------------------


def aliased_routes(count: int) -> str:
    # One route written out, the rest aliases of it: quick to read, and none of them
    # catches every row (that would make the later ones a problem of their own).
    route = "{subject: 'events.{event_type}', when: {aggregate_type: ticket}}"
    return BASE + f"routes: [&route {route}" + ", *route" * (count - 1) + "]\n"


def test_routes_up_to_the_limit_load() -> None:
    assert len(parse_config(aliased_routes(MAX_ROUTES), env={}).routes) == MAX_ROUTES


def test_more_routes_than_the_limit_are_refused_in_one_line() -> None:
    assert one_problem(aliased_routes(MAX_ROUTES + 1)) == (
        "config.yaml:6: routes: 10,001 routes, over the limit of 10,000: route on a "
        "placeholder (subject: events.{aggregate_type}) rather than one route per value, "
        "or split the tables among several bridges"
    )


# --- the commands ------------------------------------------------------------------------


ROUTES_OVER = "routes: 10,001 routes, over the limit of 10,000"


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(
    ("text", "problem"),
    [(alias_bomb(10), TOO_MANY_VALUES), (aliased_routes(MAX_ROUTES + 1), ROUTES_OVER)],
    ids=["values", "routes"],
)
def test_check_and_run_refuse_alike_before_connecting(
    command: str, text: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert main([command, "--config", str(path)]) == (2 if command == "check" else 1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "cdc-bridge: invalid configuration:"
    [line] = lines[1:]
    assert line.startswith(str(path)) and problem.removeprefix("config.yaml") in line
