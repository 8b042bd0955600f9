"""postgres.failover on each server version: whether the slot becomes a failover slot."""

import pytest

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.errors import FatalError
from cdc_bridge.source.setup import failover_wanted

CONFIG = """\
postgres:
  dsn: host=a,b port=5432,5432 dbname=app target_session_attrs=read-write
  failover: {failover}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {{name: OUTBOX, subjects: ["events.>"]}}
routes:
  - subject: "events.{{event_type}}"
"""


def config(failover: str) -> BridgeConfig:
    return parse_config(CONFIG.format(failover=failover), env={})


@pytest.mark.parametrize(
    ("failover", "version", "wanted"),
    [
        ("auto", 180001, True),
        ("auto", 170000, True),
        ("auto", 160004, False),
        ("auto", 150020, False),
        ("true", 170005, True),
        ("false", 180001, False),
        ("false", 150020, False),
    ],
)
def test_auto_means_on_from_17(failover: str, version: int, wanted: bool) -> None:
    assert failover_wanted(config(failover), version) is wanted


def test_true_on_an_older_server_is_one_line_naming_the_version() -> None:
    with pytest.raises(FatalError) as caught:
        failover_wanted(config("true"), 150020)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("postgres.failover: true needs PostgreSQL 17 or later")
    assert "the server is 15.20" in message and "auto or false" in message


def test_a_slot_made_on_a_standby_is_never_a_failover_slot() -> None:
    """postgres.source: standby (PostgreSQL cannot make such a slot a failover slot):
    auto means off there, for `run`, `init` and `slots create` alike."""
    text = CONFIG.format(failover="auto").replace(
        "  failover: auto\n",
        "  failover: auto\n  source: standby\n  primary_dsn: host=a dbname=app\n",
    )
    standby = parse_config(text, env={})
    assert standby.postgres.source == "standby"
    assert failover_wanted(standby, 180001) is False
