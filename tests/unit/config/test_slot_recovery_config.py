"""postgres.on_slot_lost: `fail` by default; `recover` is refused for logical messages."""

from __future__ import annotations

import pytest

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.problems import ConfigError

BASE = """\
postgres:
  dsn: postgresql://app@127.0.0.1:5432/app
{extra}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {{name: OUTBOX, subjects: ["events.>"]}}
routes:
  - subject: "events.{{event_type}}"
"""


def test_fail_is_the_default_and_recover_can_be_chosen() -> None:
    assert parse_config(BASE.format(extra=""), env={}).postgres.on_slot_lost == "fail"
    chosen = parse_config(BASE.format(extra="  on_slot_lost: recover"), env={})
    assert chosen.postgres.on_slot_lost == "recover"


def test_an_unknown_choice_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.format(extra="  on_slot_lost: ignore"), source="c.yaml", env={})
    [problem] = caught.value.problems
    assert problem.startswith("c.yaml:3: postgres.on_slot_lost:")


def test_recover_is_refused_for_a_logical_message_outbox() -> None:
    text = BASE.format(extra="  on_slot_lost: recover") + "outbox:\n  message_prefixes: [outbox]\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="c.yaml", env={})
    [problem] = caught.value.problems
    assert "postgres.on_slot_lost: `recover` republishes outbox rows from the table" in problem
    assert "leave no rows to recover from" in problem
