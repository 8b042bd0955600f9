import json
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from support import paths

from cdc_bridge.config.load import load_config, parse_config
from cdc_bridge.config.model import BridgeConfig, RouteConfig
from cdc_bridge.config.problems import ConfigError, format_key_path
from cdc_bridge.core.redaction import redact_dsn
from cdc_bridge.core.templates import parse_template

REPO = paths.REPO

# The contract from the brief, verbatim apart from the DSN.
CONTRACT = """\
postgres:
  dsn: postgresql://app@127.0.0.1:5432/app
  slot: cdc_bridge
  publication: cdc_bridge
  plugin: pgoutput
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
outbox:
  table: public.outbox
routes:
  - when: {aggregate_type: ticket}
    subject: "events.ticket.{event_type}"
  - subject: "events.other.{aggregate_type}"
dead_letter: {subject: events.dlq}
"""

# A minimal valid file whose routes section the tests below replace.
BASE = """\
postgres:
  dsn: postgresql://app:hunter2@127.0.0.1:5432/app
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="config.yaml", env=env or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def with_routes(routes: str, extra: str = "") -> str:
    return BASE + "routes:\n" + routes + extra


def one_problem(text: str, env: dict[str, str] | None = None) -> str:
    found = problems(text, env)
    assert len(found) == 1, found
    return found[0]


# --- the contract and defaults -------------------------------------------------------


def test_contract_example_parses_with_defaults() -> None:
    config = parse_config(CONTRACT, env={})
    assert config.postgres.dsn == "postgresql://app@127.0.0.1:5432/app"
    assert (config.postgres.slot, config.postgres.publication) == ("cdc_bridge", "cdc_bridge")
    assert config.postgres.plugin == "pgoutput"
    assert config.postgres.status_interval == 10.0
    assert config.postgres.connect_timeout == 10.0
    assert config.nats.servers == ("nats://127.0.0.1:4222",)
    stream = config.nats.stream
    assert (stream.name, stream.subjects) == ("OUTBOX", ("events.>",))
    assert (stream.duplicate_window, stream.storage, stream.replicas, stream.max_age) == (
        120.0,
        "file",
        1,
        0.0,
    )
    assert (config.nats.ack_timeout, config.nats.max_in_flight) == (5.0, 4096)
    assert config.nats.connect_timeout == 5.0
    assert config.outbox.tables == ("public.outbox",)
    assert config.outbox.id_column == "id"
    assert config.outbox.payload_column == "payload"
    assert config.outbox.headers_column == "headers"
    first, second = config.routes
    assert first.name == "routes[0]"
    assert first.when == (("aggregate_type", ("ticket",)),)
    assert first.subject == "events.ticket.{event_type}"
    assert (first.payload, first.id, first.headers) == ("payload", "id", ())
    assert second.name == "routes[1]" and second.when == ()
    assert config.dead_letter is not None and config.dead_letter.subject == "events.dlq"
    assert (config.logging.format, config.logging.level) == ("json", "info")
    assert config.shutdown_timeout == 10.0
    assert config.http.listen == "127.0.0.1:8080"  # the default
    assert config.stall_timeout == 60.0


def test_every_key_can_be_set() -> None:
    text = """\
postgres:
  dsn: host=db user=app
  slot: my_slot
  publication: my_pub
  plugin: wal2json
  status_interval: 500ms
  connect_timeout: 3s
nats:
  servers: nats://a:4222, nats://b:4222
  stream:
    name: EVENTS
    subjects: [events.>, audit.*]
    duplicate_window: 5m
    storage: memory
    replicas: 3
    max_age: 1h
  ack_timeout: 2s
  max_in_flight: 10
  connect_timeout: 1s
  subject_space: events.>
outbox:
  table: [outbox, billing.outbox]
  id_column: event_id
  payload_column: body
  headers_column: null
routes:
  - name: tickets
    when: {table: public.outbox, aggregate_type: [ticket, "case*"]}
    subject: "events.{aggregate_type}.{event_type}"
    headers: {Aggregate-Id: "{aggregate_id}", Source: "{table}", Kind: "fixed.value"}
    payload: row
    id: aggregate_id
dead_letter: {subject: events.dead}
logging: {format: console, level: WARN}
shutdown_timeout: 30s
http: {listen: "127.0.0.1:0"}
"""
    config = parse_config(text, env={})
    assert config.postgres.plugin == "wal2json"
    assert config.postgres.status_interval == 0.5
    assert config.nats.servers == ("nats://a:4222", "nats://b:4222")
    assert config.nats.stream.subjects == ("events.>", "audit.*")
    assert config.nats.stream.duplicate_window == 300.0
    assert config.nats.stream.storage == "memory"
    assert config.nats.stream.replicas == 3
    assert config.nats.stream.max_age == 3600.0
    assert config.nats.max_in_flight == 10
    assert config.outbox.tables == ("public.outbox", "billing.outbox")
    assert config.outbox.headers_column is None
    route = config.routes[0]
    assert route.name == "tickets"
    assert route.when == (("table", ("public.outbox",)), ("aggregate_type", ("ticket", "case*")))
    assert route.headers == (
        ("Aggregate-Id", "{aggregate_id}"),
        ("Source", "{table}"),
        ("Kind", "fixed.value"),
    )
    assert (route.payload, route.id) == ("row", "aggregate_id")
    expected_logging = {"format": "console", "level": "warning"}
    assert config.logging == config.logging.model_copy(update=expected_logging)
    assert config.shutdown_timeout == 30.0
    assert config.http.listen == "127.0.0.1:0"
    assert (config.http.host, config.http.port) == ("127.0.0.1", 0)


def test_shipped_config_files_parse() -> None:
    env = {"CDC_BRIDGE_DEV_DSN": "postgresql://x@h/d", "CDC_BRIDGE_DEV_NATS_URL": "nats://h:1"}
    dev = load_config(REPO / "config" / "dev.yaml", env=env)
    assert dev.postgres.status_interval == 1.0
    example = load_config(REPO / "config" / "example.yaml", env={})
    assert example.routes


def test_cloudevents_and_debezium_examples_load() -> None:
    from cdc_bridge.routing.router import Outbound, Router

    cloudevents = load_config(REPO / "config" / "cloudevents.yaml", env={})
    assert cloudevents.outbox.format == "cloudevents"
    assert [r.format for r in cloudevents.routes] == [
        "cloudevents-structured",
        "cloudevents",
        "cloudevents",
    ]
    orders = cloudevents.routes[0].cloudevents
    assert orders.extensions == (("aggregatetype", "{aggregate_type}"),)
    assert {"aggregate_type", "aggregate_id", "event_type"} <= cloudevents.template_columns()
    debezium = load_config(REPO / "config" / "debezium.yaml", env={})
    assert debezium.routes[0].payload == "debezium"
    assert debezium.postgres.database == "app"
    row = {"id": "1", "aggregate_type": "order", "aggregate_id": "O-1", "event_type": "placed",
           "payload": "{}", "headers": None, "created_at": None}  # fmt: skip
    outcome = Router(cloudevents).route("public.outbox", row)
    assert isinstance(outcome, Outbound) and outcome.event is not None


# Every example config, loaded as a user would (the variables its header names).
EXAMPLE_ENV = {
    "CDC_BRIDGE_DSN": "postgresql://cdc_bridge@127.0.0.1:5432/app",
    "CDC_BRIDGE_DEV_DSN": "postgresql://cdc_bridge@127.0.0.1:5432/app",
    "CDC_BRIDGE_DEV_NATS_URL": "nats://127.0.0.1:4222",
}


def test_every_example_config_has_its_own_stream_and_subject_space() -> None:
    """Issue 29 items 1 and 15: the example configs run side by side on one NATS. Two
    streams whose subjects overlap cannot both exist (JetStream refuses the second), so
    distinct streams must capture disjoint subjects; configs naming the same stream
    (dev.yaml, compose.yaml, example.yaml: one bridge, deployed three ways) define it
    alike and share its slot. Each has a subject space, so no order_guard_stream_wide."""
    from cdc_bridge.core.subjects import filters_overlap

    configs = {
        p.name: load_config(p, env=EXAMPLE_ENV) for p in sorted((REPO / "config").glob("*.yaml"))
    }
    assert len(configs) >= 10
    streams: dict[str, tuple[str, tuple[str, ...], str]] = {}  # name -> (file, subjects, slot)
    for file, config in configs.items():
        assert config.subject_space is not None, f"{file}: no subject space"
        stream = config.nats.stream
        mine = (file, tuple(sorted(stream.subjects)), config.postgres.slot)
        first = streams.setdefault(stream.name, mine)
        assert first[1:] == mine[1:], f"{file} and {first[0]} define stream {stream.name} apart"
    slots = [slot for _, _, slot in streams.values()]
    assert len(set(slots)) == len(slots), f"two streams share a slot: {slots}"
    named = sorted(streams.items())
    for index, (name, (file, subjects, _)) in enumerate(named):
        for other, (other_file, other_subjects, _) in named[index + 1 :]:
            overlaps = [(a, b) for a in subjects for b in other_subjects if filters_overlap(a, b)]
            assert not overlaps, f"{file} ({name}) and {other_file} ({other}) overlap: {overlaps}"


def test_template_columns_leave_out_plain_routes_cloudevents_keys() -> None:
    routes = (
        "  - when: {event_type: a}\n    subject: events.a\n"
        '    cloudevents: {type: "{never_read}"}\n'
        "  - subject: events.b\n    format: cloudevents\n"
        '    cloudevents: {extensions: {tenant: "{tenant}"}}\n'
    )
    columns = parse_config(with_routes(routes), env={}).template_columns()
    assert "tenant" in columns and "never_read" not in columns


@pytest.mark.parametrize(
    ("dsn", "database"),
    [
        ("postgresql://app:pw@db:5432/shop", "shop"),
        ("postgresql://app@db/", "app"),
        ("postgresql://db/x?dbname=other", "other"),
        ("host=db dbname=shop user=app", "shop"),
        ("host=db dbname='my shop'", "my shop"),
        ("host=db user=app", "app"),
        ("host=db", "postgres"),
    ],
)
def test_the_database_a_dsn_names(dsn: str, database: str) -> None:
    text = BASE.replace("postgresql://app:hunter2@127.0.0.1:5432/app", json.dumps(dsn))
    assert parse_config(with_routes("  - subject: events.x\n"), env={}).postgres.database == "app"
    assert parse_config(text + "routes:\n  - subject: events.x\n", env={}).postgres.database == (
        database
    )


def test_example_shows_every_key() -> None:
    from pydantic import BaseModel


    example = yaml.safe_load((REPO / "config" / "example.yaml").read_text())

    def missing(model: type[BaseModel], data: dict[str, object], path: str) -> list[str]:
        absent = []
        for name, info in model.model_fields.items():
            key = info.alias or name  # the key in the file (outbox.table is `tables`)
            if key not in data:
                absent.append(path + key)
                continue
            nested, value = info.annotation, data[key]
            for candidate in typing.get_args(nested) or (nested,):
                is_section = isinstance(candidate, type) and issubclass(candidate, BaseModel)
                if is_section and isinstance(value, dict):  # routes are checked below
                    absent += missing(candidate, value, f"{path}{key}.")
        return absent

    assert missing(BridgeConfig, example, "") == []
    assert missing(RouteConfig, example["routes"][0], "routes[0].") == []


def test_config_values_are_frozen() -> None:
    config = parse_config(CONTRACT, env={})
    with pytest.raises(ValidationError, match="frozen"):
        config.postgres.slot = "other"
    assert isinstance(config, BridgeConfig)
    hash(config.routes)


def test_the_sections_validate_straight_into_the_values() -> None:
    """One model: what the bridge reads is what the file validated into, defaults and
    derived values included (no second set of classes to keep in step)."""
    config = BridgeConfig.model_validate(yaml.safe_load(CONTRACT))
    assert config == parse_config(CONTRACT, env={})
    first, second = config.routes
    assert (second.name, second.payload, second.id, second.id_given) == (
        "routes[1]",
        "payload",
        "id",
        False,
    )
    assert first.subject_template == parse_template("events.ticket.{event_type}")
    sections: list[type[BaseModel]] = [
        BridgeConfig,
        type(config.postgres),
        type(config.nats),
        type(first),
    ]
    for section in sections:
        assert section.model_config.get("frozen") and section.model_config.get("extra") == "forbid"


def test_derived_values_are_computed_once_at_load() -> None:
    text = CONTRACT.replace(
        '"events.ticket.{event_type}"', '"events.ticket.{event_type}"\n    headers: {A: "{id}"}'
    )
    config = parse_config(text + "http: {listen: '[::1]:9000'}\n", env={})
    assert config.redactor() is config.redactor()
    assert config.secrets() is config.secrets()
    route = config.routes[0]
    assert route.subject_template is route.subject_template
    assert route.header_templates == (("A", parse_template("{id}")),)
    assert (config.http.host, config.http.port) == ("::1", 9000)


def test_template_columns_lists_every_referenced_column() -> None:
    text = with_routes(
        """\
  - when: {table: public.outbox, aggregate_type: ticket}
    subject: "events.{event_type}"
    headers: {A: "{aggregate_id}-{table}"}
    payload: row
  - subject: "other.{kind}"
    id: event_id
"""
    )
    config = parse_config(text, env={})
    assert config.template_columns() == {
        "aggregate_type",
        "event_type",
        "aggregate_id",
        "id",
        "kind",
        "payload",
        "event_id",
    }


def test_optional_sections_may_be_empty() -> None:
    text = CONTRACT.replace("outbox:\n  table: public.outbox\n", "outbox:\n")
    config = parse_config(text + "logging:\nhttp:\n", env={})
    assert config.logging.level == "info"
    assert config.http.listen is None  # an empty http section turns the endpoint off


@pytest.mark.parametrize("disabled", ["null", "false", '""', "~"])
def test_http_listen_can_be_disabled(disabled: str) -> None:
    config = parse_config(CONTRACT + f"http: {{listen: {disabled}}}\n", env={})
    assert config.http.listen is None
    assert parse_config(CONTRACT + "http: false\n", env={}).http.listen is None


# --- one line per problem, with file and line ----------------------------------------


def test_unknown_key_gets_a_suggestion_and_line() -> None:
    text = CONTRACT.replace("  publication: cdc_bridge", "  publicaton: cdc_bridge")
    assert one_problem(text) == (
        "config.yaml:4: postgres.publicaton: unknown key 'publicaton'; did you mean 'publication'?"
    )


def test_unknown_keys_in_nested_and_listed_sections() -> None:
    text = (
        CONTRACT.replace("subject: events.dlq", "subjet: events.dlq").replace(
            '    subject: "events.ticket', '    subjects: "events.ticket'
        )
        + "loging: {}\n"
    )
    found = problems(text)
    assert (
        "config.yaml:13: routes[0].subjects: unknown key 'subjects'; did you mean 'subject'?"
        in found
    )
    assert "config.yaml:12: routes[0].subject: required key is missing" in found
    assert (
        "config.yaml:15: dead_letter.subjet: unknown key 'subjet'; did you mean 'subject'?" in found
    )
    assert "config.yaml:16: loging: unknown key 'loging'; did you mean 'logging'?" in found


def test_unknown_key_without_a_close_match() -> None:
    problem = one_problem(CONTRACT + "zzz: 1\n")
    assert problem == "config.yaml:16: zzz: unknown key 'zzz'"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  plugin: pgoutput",
            "  status_interval: fast",
            "config.yaml:5: postgres.status_interval: "
            "expected a duration like 500ms, 10s or 2m, got 'fast'",
        ),
        (
            "  slot: cdc_bridge",
            "  slot: 42",
            "config.yaml:3: postgres.slot: expected text, got 42",
        ),
        (
            "  plugin: pgoutput",
            "  plugin: decoderbufs",
            "config.yaml:5: postgres.plugin: expected 'pgoutput' or 'wal2json', got 'decoderbufs'",
        ),
        (
            "  servers: [nats://127.0.0.1:4222]",
            "  servers: [nats://127.0.0.1:4222]\n  max_in_flight: many",
            "config.yaml:8: nats.max_in_flight: expected a whole number, got 'many'",
        ),
        (
            "  servers: [nats://127.0.0.1:4222]",
            "  servers: [nats://127.0.0.1:4222]\n  max_in_flight: 0",
            "config.yaml:8: nats.max_in_flight: must be at least 1, got 0",
        ),
        (
            "  servers: [nats://127.0.0.1:4222]",
            "  servers: []",
            "config.yaml:7: nats.servers: must not be empty",
        ),
        (
            '  stream: {name: OUTBOX, subjects: ["events.>"]}',
            "  stream: OUTBOX",
            "config.yaml:8: nats.stream: expected a mapping (key: value lines), got text",
        ),
        (
            '  stream: {name: OUTBOX, subjects: ["events.>"]}',
            '  stream: {name: OUTBOX, subjects: ["events.>"], storage: disk}',
            "config.yaml:8: nats.stream.storage: expected 'file' or 'memory', got 'disk'",
        ),
        (
            '  stream: {name: OUTBOX, subjects: ["events.>"]}',
            '  stream: {name: OUTBOX, subjects: ["events.>"], replicas: 7}',
            "config.yaml:8: nats.stream.replicas: must be at most 5, got 7",
        ),
        (
            "  table: public.outbox",
            "  table: {name: outbox}",
            "config.yaml:10: outbox.table: expected one value or a list of them, got a mapping",
        ),
        (
            "  servers: [nats://127.0.0.1:4222]",
            "  servers: 42",
            "config.yaml:7: nats.servers: "
            "expected a list of server URLs, or one comma-separated string, got 42",
        ),
        (
            '  stream: {name: OUTBOX, subjects: ["events.>"]}',
            "  stream: {name: OUTBOX, subjects: {a: b}}",
            "config.yaml:8: nats.stream.subjects: "
            "expected one value or a list of them, got a mapping",
        ),
        (
            "dead_letter: {subject: events.dlq}",
            "dead_letter: {subject: events.dlq}\nshutdown_timeout: -5s",
            "config.yaml:16: shutdown_timeout: "
            "expected a duration like 500ms, 10s or 2m, got '-5s'",
        ),
        (
            "dead_letter: {subject: events.dlq}",
            "dead_letter: {subject: events.dlq}\nlogging: {level: loud}",
            "config.yaml:16: logging.level: "
            "expected 'debug', 'info', 'warning' or 'error', got 'loud'",
        ),
        (
            "dead_letter: {subject: events.dlq}",
            "dead_letter: {subject: events.dlq}\nhttp: {listen: localhost}",
            "config.yaml:16: http.listen: expected host:port like 127.0.0.1:8080, got 'localhost'",
        ),
    ],
)
def test_type_errors_say_what_was_expected(old: str, new: str, expected: str) -> None:
    assert old in CONTRACT
    assert one_problem(CONTRACT.replace(old, new)) == expected


def test_missing_required_keys_point_at_the_parent() -> None:
    text = CONTRACT.replace("  dsn: postgresql://app@127.0.0.1:5432/app\n", "").replace(
        '{name: OUTBOX, subjects: ["events.>"]}', '{subjects: ["events.>"]}'
    )
    assert problems(text) == [
        "config.yaml:1: postgres.dsn: required key is missing",
        "config.yaml:7: nats.stream.name: required key is missing",
    ]


def test_missing_sections_have_no_line() -> None:
    assert problems("logging: {}\n") == [
        "config.yaml: postgres: required key is missing",
        "config.yaml: nats: required key is missing",
        "config.yaml: routes: required key is missing",
    ]


def test_empty_file_and_non_mapping_file() -> None:
    assert problems("") == [
        "config.yaml: expected a mapping of sections (postgres:, nats:, routes: ...); "
        "the file is empty"
    ]
    assert one_problem("- a\n- b\n").endswith("found a list")


def test_all_problems_are_reported_at_once_in_line_order() -> None:
    text = (
        CONTRACT.replace("slot: cdc_bridge", "slot: Bad-Slot")
        .replace("plugin: pgoutput", "plugin: nope")
        .replace("table: public.outbox", "table: a.b.c")
    )
    found = problems(text)
    assert [line.split(":")[1] for line in found] == ["3", "5", "10"]


def test_yaml_syntax_error_has_a_line_and_no_source_text() -> None:
    text = "postgres:\n  dsn: postgresql://app:hunter2@db/app\n  slot: [unclosed\nnats: {}\n"
    problem = one_problem(text)
    assert problem.startswith("config.yaml:4: invalid YAML:")
    assert "hunter2" not in problem


def test_duplicate_keys_are_an_error() -> None:
    text = CONTRACT.replace("  slot: cdc_bridge\n", "  slot: cdc_bridge\n  slot: other\n")
    assert one_problem(text) == "config.yaml:4: postgres.slot: duplicate key (first on line 3)"


def test_merge_keys_may_be_overridden() -> None:
    text = CONTRACT.replace(
        "routes:\n",
        "x-defaults: &defaults {subject: 'events.x.{event_type}', payload: row}\nroutes:\n",
    )
    text = text.replace(
        '  - subject: "events.other.{aggregate_type}"', "  - <<: *defaults\n    payload: body"
    )
    found = problems(text)
    # x-defaults is an unknown top-level key, but the merged route itself is fine.
    assert found == ["config.yaml:11: x-defaults: unknown key 'x-defaults'"]


def test_yaml_keys_are_read_as_text() -> None:
    # YAML 1.1 reads an unquoted `on` as true; as a column name it must stay "on".
    text = with_routes("  - when: {on: yes}\n    subject: a.b\n")
    problem = one_problem(text)
    assert "routes[0].when.on" in problem and "quote the value" in problem


def test_route_line_numbers_count_from_the_file_start() -> None:
    text = with_routes('  - {when: {x: y}, subject: "a.{x}"}\n  - subject: "b.*"\n')
    assert one_problem(text) == (
        "config.yaml:8: routes[1].subject: "
        "published subjects are concrete: the wildcard '*' is not allowed"
    )


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(CONTRACT.replace("slot: cdc_bridge", "slot: 'no spaces'"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems[0].startswith(f"{path}:3: postgres.slot: expected a slot name")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")


# --- environment expansion -----------------------------------------------------------


def test_env_expansion_with_defaults() -> None:
    text = CONTRACT.replace(
        "dsn: postgresql://app@127.0.0.1:5432/app",
        "dsn: postgresql://${PGUSER}@${PGHOST:-localhost}/app",
    ).replace("servers: [nats://127.0.0.1:4222]", 'servers: ["${NATS_URL:-nats://127.0.0.1:4222}"]')
    text += "shutdown_timeout: ${STOP:-3s}\n"
    config = parse_config(text, env={"PGUSER": "me", "PGHOST": ""})
    assert config.postgres.dsn == "postgresql://me@localhost/app"  # empty counts as unset
    assert config.nats.servers == ("nats://127.0.0.1:4222",)
    assert config.shutdown_timeout == 3.0
    assert parse_config(text, env={"PGUSER": "me", "STOP": "1m"}).shutdown_timeout == 60.0


def test_env_expansion_feeds_typed_values() -> None:
    text = CONTRACT.replace(
        "  servers: [nats://127.0.0.1:4222]",
        "  servers: [nats://127.0.0.1:4222]\n  max_in_flight: ${INFLIGHT}",
    )
    assert parse_config(text, env={"INFLIGHT": "12"}).nats.max_in_flight == 12


def test_missing_env_var_names_the_key_and_variable_only() -> None:
    text = CONTRACT.replace(
        "dsn: postgresql://app@127.0.0.1:5432/app", "dsn: postgresql://app:${PGPASSWORD}@db/app"
    )
    assert one_problem(text) == (
        "config.yaml:2: postgres.dsn: environment variable PGPASSWORD is not set "
        "(write ${PGPASSWORD:-default} to give a default)"
    )


def test_env_escape_and_malformed_reference() -> None:
    escaped = CONTRACT.replace(
        "dsn: postgresql://app@127.0.0.1:5432/app", "dsn: host=db password=a$${b}"
    )
    assert parse_config(escaped, env={}).postgres.dsn == "host=db password=a${b}"
    malformed = CONTRACT.replace("slot: cdc_bridge", "slot: ${1BAD}")
    assert one_problem(malformed) == (
        "config.yaml:3: postgres.slot: malformed ${...}: expected ${NAME} or ${NAME:-default}"
    )


def test_env_is_read_from_the_process_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDC_TEST_SLOT", "from_env")
    text = CONTRACT.replace("slot: cdc_bridge", "slot: ${CDC_TEST_SLOT}")
    assert parse_config(text).postgres.slot == "from_env"


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://app:hunter2@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgres://app:p@ss@db/app", "postgres://app:***@db/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        (
            "postgresql://db/app?user=a&password=hunter2&x=1",
            "postgresql://db/app?user=a&password=***&x=1",
        ),
        ("host=db user=app password=hunter2 dbname=x", "host=db user=app password=*** dbname=x"),
        ("host=db password = 'hun ter2' port=5", "host=db password = *** port=5"),
        ("host=db sslpassword=k", "host=db sslpassword=***"),
        ("nats://user:hunter2@127.0.0.1:4222", "nats://user:***@127.0.0.1:4222"),
        ("nats://hunter2@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
    ],
)
def test_redact_dsn(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted
    assert "hunter2" not in redact_dsn(dsn) and "hun ter2" not in redact_dsn(dsn)


def test_errors_never_echo_secrets() -> None:
    secret = "postgresql://app:hunter2@db/app"
    cases = [
        # A DSN written where the section belongs.
        CONTRACT.replace(
            "postgres:\n  dsn: postgresql://app@127.0.0.1:5432/app\n", f"postgres: {secret}\nx:\n"
        ),
        # A wrong type under a secret key.
        CONTRACT.replace("dsn: postgresql://app@127.0.0.1:5432/app", "dsn: [hunter2]"),
        # An unknown key holding a password.
        CONTRACT.replace("  slot: cdc_bridge", "  password: hunter2"),
        # A URL with a password in a non-secret place.
        CONTRACT.replace("name: OUTBOX", f"name: '{secret}'"),
    ]
    for text in cases:
        for problem in problems(text):
            assert "hunter2" not in problem, problem
    redacted = problems(cases[1])
    assert redacted == ["config.yaml:2: postgres.dsn: expected text, got <redacted>"]


def test_dsn_is_not_in_repr() -> None:
    config = parse_config(BASE + "routes: [{subject: a.b}]\n", env={})
    assert "hunter2" not in repr(config)


# --- postgres and nats values --------------------------------------------------------


@pytest.mark.parametrize("slot", ["Upper", "has-dash", "x" * 64, ""])
def test_slot_names_are_identifiers(slot: str) -> None:
    problem = one_problem(CONTRACT.replace("slot: cdc_bridge", f"slot: '{slot}'"))
    assert "postgres.slot: expected a slot name of up to 63 characters" in problem


def test_publication_names_are_identifiers() -> None:
    problem = one_problem(CONTRACT.replace("publication: cdc_bridge", "publication: 1pub"))
    assert "postgres.publication: expected a publication name" in problem
    assert parse_config(CONTRACT.replace("slot: cdc_bridge", f"slot: {'s' * 63}"), env={})


@pytest.mark.parametrize(
    ("subjects", "message"),
    [
        ("[]", "must not be empty"),
        ('["events.>.x"]', "'>' must be the last token"),
        ('["events.a*"]', "wildcards must be whole tokens"),
        ('["events..x"]', "has an empty token"),
        ('["events x"]', "whitespace"),
    ],
)
def test_stream_subjects(subjects: str, message: str) -> None:
    text = CONTRACT.replace('subjects: ["events.>"]', f"subjects: {subjects}")
    assert message in one_problem(text)


def test_stream_subjects_accept_one_string_and_wildcards() -> None:
    text = CONTRACT.replace('subjects: ["events.>"]', "subjects: 'events.*.x'")
    assert parse_config(text, env={}).nats.stream.subjects == ("events.*.x",)


def test_stream_name() -> None:
    problem = one_problem(CONTRACT.replace("name: OUTBOX", "name: OUT.BOX"))
    assert "nats.stream.name: expected a stream name" in problem


# --- outbox tables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tables"),
    [
        ("outbox", ("public.outbox",)),
        ("app.Outbox", ("app.Outbox",)),
        ("[outbox, app.events]", ("public.outbox", "app.events")),
    ],
)
def test_outbox_tables_are_normalised(value: str, tables: tuple[str, ...]) -> None:
    text = CONTRACT.replace("table: public.outbox", f"table: {value}")
    assert parse_config(text, env={}).outbox.tables == tables


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "[outbox, public.outbox]",
            "config.yaml:10: outbox.table: public.outbox listed more than once",
        ),
        (
            "a.b.c",
            "config.yaml:10: outbox.table: expected a table name like public.outbox, got 'a.b.c'",
        ),
        ("[ok, 'bad name']", "config.yaml:10: outbox.table[1]: expected a table name"),
        ("[]", "config.yaml:10: outbox.table: must not be empty"),
    ],
)
def test_outbox_table_errors(value: str, message: str) -> None:
    assert one_problem(CONTRACT.replace("table: public.outbox", f"table: {value}")).startswith(
        message
    )


# --- routes ----------------------------------------------------------------------------


def test_when_accepts_strings_lists_and_numbers() -> None:
    text = with_routes("  - when: {version: 2, kind: [a, 'b*']}\n    subject: a.b\n")
    assert parse_config(text, env={}).routes[0].when == (("version", ("2",)), ("kind", ("a", "b*")))


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("{}", "routes[0].when: is empty: list columns to compare"),
        ("{kind: []}", "routes[0].when.kind: must not be empty"),
        ("{kind: true}", "routes[0].when.kind: true/false never equal a column's text"),
        ("{'bad col': x}", "routes[0].when.bad col: expected a column name"),
        ("[kind]", "routes[0].when: expected a mapping (key: value lines), got a list"),
    ],
)
def test_when_errors(when: str, message: str) -> None:
    problem = one_problem(with_routes(f"  - when: {when}\n    subject: a.b\n"))
    assert problem.startswith(f"config.yaml:7: {message}"), problem


def test_when_and_templates_read_json_paths() -> None:
    text = with_routes(
        "  - when: {payload.priority: high, payload.flags.vip: true, payload.n: [1, false]}\n"
        "    subject: 'events.{payload.customer.region}'\n"
        "    headers: {Customer: '{payload.customer-id}'}\n"
    )
    config = parse_config(text, env={})
    assert config.routes[0].when == (
        ("payload.priority", ("high",)),
        ("payload.flags.vip", ("true",)),  # a JSON boolean's text
        ("payload.n", ("1", "false")),
    )
    assert "payload" in config.template_columns()
    assert config.json_paths() == {"payload": ("routes[0].when", "payload.priority")}


@pytest.mark.parametrize(
    ("route", "key", "message"),
    [
        (
            "{when: {table.x: a}, subject: a.b}",
            "routes[0].when.table.x",
            "'table.x' reads inside `table`, which is not a JSON column",
        ),
        (
            "{subject: 'a.{table.name}'}",
            "routes[0].subject",
            "'table.name' reads inside `table`, which is not a JSON column",
        ),
        (
            "{when: {payload..x: a}, subject: a.b}",
            "routes[0].when.payload..x",
            "expected a column name, or a path into a json/jsonb column",
        ),
        (
            "{subject: 'a.{payload.a b}'}",
            "routes[0].subject",
            "must name a column, like {event_type}, or a path into a json/jsonb column",
        ),
    ],
)
def test_json_path_errors(route: str, key: str, message: str) -> None:
    problem = one_problem(with_routes(f"  - {route}\n"))
    assert problem.startswith(f"config.yaml:7: {key}: "), problem
    assert message in problem


def test_routes_must_not_be_empty() -> None:
    assert one_problem(BASE + "routes: []\n") == "config.yaml:6: routes: must not be empty"


def test_route_after_a_catch_all_can_never_match() -> None:
    text = with_routes(
        "  - {when: {a: x}, subject: a.x}\n  - subject: a.all\n  - {when: {a: y}, subject: a.y}\n"
    )
    assert one_problem(text) == (
        "config.yaml:9: routes[2]: can never match: routes[1] has no `when` and catches every row"
    )


def test_route_names_must_be_unique() -> None:
    text = with_routes("  - {name: r, when: {a: x}, subject: a.x}\n  - {name: r, subject: a.y}\n")
    assert one_problem(text) == "config.yaml:8: routes[1].name: 'r' is also the name of routes[0]"


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("events.*", "published subjects are concrete: the wildcard '*' is not allowed"),
        ("events.>", "published subjects are concrete: the wildcard '>' is not allowed"),
        ("events.{kind}*", "the wildcard '*' is not allowed"),
        ("events..{kind}", "has an empty token"),
        (".events", "has an empty token"),
        ("events.{kind}.", "has an empty token"),
        ("events {kind}", "whitespace"),
        ("events.{kind", "unmatched '{'"),
        ("events.}", "unmatched '}'"),
        ("events.{1kind}", "placeholder '{1kind}' must name a column"),
        ("events.{}", "placeholder '{}' must name a column"),
        ("events.{table}", "{table} always contains a '.'"),
        ("", "a subject must not be empty"),
    ],
)
def test_subject_template_errors(subject: str, message: str) -> None:
    problem = one_problem(with_routes(f"  - subject: '{subject}'\n"))
    assert problem.startswith("config.yaml:7: routes[0].subject: "), problem
    assert message in problem


def test_subject_template_may_mix_literals_and_placeholders() -> None:
    text = with_routes("  - subject: 'events.v{version}.{kind}_x'\n")
    assert parse_config(text, env={}).routes[0].subject == "events.v{version}.{kind}_x"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ("{'Bad Name': x}", "routes[0].headers.Bad Name: invalid header name 'Bad Name'"),
        ("{'A:B': x}", "invalid header name"),
        ("{Nats-Msg-Id: '{id}'}", "do not set Nats-Msg-Id"),
        ("{Nats-TTL: 1h}", "routes[0].headers.Nats-TTL: Nats-TTL is reserved: Nats-* headers"),
        ("{Cdc-Lsn: x}", "routes[0].headers.Cdc-Lsn: Cdc-Lsn is set by the bridge itself"),
        (
            "{cdc-tx-last: x}",
            "routes[0].headers.cdc-tx-last: cdc-tx-last is set by the bridge itself",
        ),
        ('{A: "x\\r\\ny"}', "routes[0].headers.A: a header value may not contain control"),
        ("{A: '{oops'}", "unmatched '{'"),
        ("{A: 5}", "routes[0].headers.A: expected text, got 5"),
    ],
)
def test_header_errors(headers: str, message: str) -> None:
    problem = one_problem(with_routes(f"  - subject: a.b\n    headers: {headers}\n"))
    assert message in problem, problem


def test_payload_and_id_must_be_columns() -> None:
    found = problems(
        with_routes(
            "  - when: {a: x}\n    subject: a.b\n    payload: table\n"
            "  - {subject: a.c, id: table}\n"
        )
    )
    assert found == [
        "config.yaml:9: routes[0].payload: `table` is not a column; use a column name or `row`",
        "config.yaml:10: routes[1].id: `table` is not a column; "
        "name the column that holds the row's id",
    ]
    # `row` is only special for payload; as an id it is an ordinary column name.
    assert parse_config(with_routes("  - {subject: a.b, id: row}\n"), env={}).routes[0].id == "row"


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("dlq.{kind}", "must be a fixed subject; placeholders are not allowed here"),
        ("dlq.*", "the wildcard '*' is not allowed"),
        ("dlq..x", "has an empty token"),
    ],
)
def test_dead_letter_subject_is_concrete(subject: str, message: str) -> None:
    text = CONTRACT.replace("subject: events.dlq", f"subject: '{subject}'")
    problem = one_problem(text)
    assert problem.startswith("config.yaml:15: dead_letter.subject: ") and message in problem


def test_dead_letter_is_optional() -> None:
    text = CONTRACT.replace("dead_letter: {subject: events.dlq}\n", "")
    assert parse_config(text, env={}).dead_letter is None


# --- helpers ---------------------------------------------------------------------------


def test_format_key_path() -> None:
    assert format_key_path(("routes", 1, "subject")) == "routes[1].subject"
    assert format_key_path(("nats", "servers", 0)) == "nats.servers[0]"
    assert format_key_path(()) == ""


def test_parse_template() -> None:
    template = parse_template("a.{x}.b{{c}}.{y}")
    assert template.literals == ("a.", ".b{c}.", "")
    assert template.columns == ("x", "y")
    assert parse_template("plain").literals == ("plain",)


def test_routing_example_config_parses_and_routes_each_feature() -> None:
    from cdc_bridge.routing.router import Outbound, Router

    config = load_config(REPO / "config" / "routing.yaml", env={})
    router = Router(config)
    row = {
        "id": "1",
        "aggregate_type": "ticket",
        "aggregate_id": "T-1",
        "event_type": "created",
        "payload": "{}",
        "headers": None,
        "created_at": "x",
    }
    ticket = router.route("public.outbox", row)
    assert isinstance(ticket, Outbound) and ticket.subject == "routing.ticket.created"
    assert ticket.headers["Source-Table"] == "public.outbox"
    billing = router.route("billing.outbox", row)
    assert isinstance(billing, Outbound) and billing.subject == "routing.billing.ticket.created"
    case = router.route("public.outbox", {**row, "aggregate_type": "case-escalation"})
    assert isinstance(case, Outbound) and case.msg_id == "T-1"
    unsafe = router.route("public.outbox", {**row, "aggregate_type": "x.>"})
    assert isinstance(unsafe, Outbound) and unsafe.subject == "routing.dlq"


def test_readme_configuration_table_lists_every_key() -> None:
    """Each key of the schema, down to the second level, has a row of README's table
    (``postgres.slot``, or a shorthand in its section's row: ``.publication``,
    ``password(_file)``); a route's keys are named in the ``routes[]`` row."""
    import re

    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration reference", 1)[1].split("**Routes.**", 1)[0]
    rows = [line.split(" | ")[:3] for line in table.splitlines() if line.startswith("| `")]

    def listed(section: str | None, key: str) -> bool:
        word = re.compile(rf"(?<![\w.]){re.escape(key)}\b|\.{re.escape(key)}\b")
        for cell, _, _ in rows:
            if section is None and f"`{key}`" in cell:
                return True
            cells = (cell, cell.replace("(", "").replace(")", ""))
            if section is not None and f"`{section}." in cell and any(map(word.search, cells)):
                return True
        return False

    missing = []
    for field_name, info in BridgeConfig.model_fields.items():
        name = info.alias or field_name
        nested = next(
            (
                a
                for a in typing.get_args(info.annotation) or (info.annotation,)
                if isinstance(a, type)
            ),
            None,
        )
        fields = getattr(nested, "model_fields", None)
        if name == "routes" or fields is None:
            missing += [] if listed(None, name) or name == "routes" else [name]
            continue
        keys = [field.alias or key for key, field in fields.items()]
        missing += [f"{name}.{key}" for key in keys if not listed(name, key)]
    assert missing == []
    [route_row] = [row for row in rows if "`routes[]`" in row[0]]
    route_keys = [field.alias or key for key, field in RouteConfig.model_fields.items()]
    assert [key for key in route_keys if f"`{key}`" not in route_row[2]] == []


# --- postgres.failover -----------------------------------------------------------------


def failover_config(value: str | None) -> str:
    line = f"  failover: {value}\n" if value is not None else ""
    text = with_routes('  - subject: "events.{event_type}"\n')
    return text.replace("postgres:\n", "postgres:\n" + line, 1)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("auto", None), ("true", True), ("false", False)]
)
def test_failover_is_auto_true_or_false(value: str | None, expected: bool | None) -> None:
    assert parse_config(failover_config(value), env={}).postgres.failover is expected


def test_failover_of_another_value_is_one_line() -> None:
    line = one_problem(failover_config("sometimes"))
    assert line.startswith("config.yaml:2: postgres.failover:"), line


def test_a_standby_source_needs_the_primary_dsn() -> None:
    text = failover_config(None).replace("postgres:\n", "postgres:\n  source: standby\n", 1)
    line = one_problem(text)
    assert line.startswith("config.yaml:2: postgres.source:") and "primary_dsn" in line, line
    with_primary = text.replace(
        "  source: standby\n", "  source: standby\n  primary_dsn: host=primary dbname=app\n"
    )
    config = parse_config(with_primary, env={})
    assert (config.postgres.source, config.postgres.primary_dsn) == (
        "standby",
        "host=primary dbname=app",
    )


def test_payload_routing_example_routes_on_payload_fields() -> None:
    from cdc_bridge.routing.router import Outbound, Router

    config = load_config(REPO / "config" / "payload-routing.yaml", env={})
    assert config.json_paths() == {"payload": ("routes[0].when", "payload.priority")}
    router = Router(config)
    row = {
        "id": "1",
        "aggregate_type": "order",
        "aggregate_id": "O-1",
        "event_type": "placed",
        "payload": '{"priority": "high", "customer": {"region": "eu", "id": "C-7"}}',
        "headers": None,
    }
    urgent = router.route("public.outbox", row)
    assert isinstance(urgent, Outbound) and urgent.subject == "payload-routing.urgent.eu"
    assert urgent.headers["Customer-Id"] == "C-7"
    vip = router.route("public.outbox", {**row, "payload": '{"customer": {"vip": true}}'})
    assert isinstance(vip, Outbound) and vip.subject == "payload-routing.vip.placed"
    lost = router.route("public.outbox", {**row, "payload": '{"priority": "high"}'})
    assert isinstance(lost, Outbound) and lost.subject == "payload-routing.dlq"
    assert lost.headers["Cdc-Subject"] == "payload-routing.urgent.{payload.customer.region}"


def test_partitioned_example_routes_as_the_root() -> None:
    from cdc_bridge.routing.router import Outbound, Router

    config = load_config(REPO / "config" / "partitioned.yaml", env={})
    assert config.outbox.tables == ("public.events",)
    assert config.postgres.plugin == "pgoutput"
    row = {"id": "1", "aggregate_type": "order", "event_type": "placed", "payload": "{}"}
    routed = Router(config).route("public.events", row)
    assert isinstance(routed, Outbound) and routed.subject == "partitioned.order.placed"


# --- the subject space (issue 17) ----------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "dead_letter", "space"),
    [
        (["events.orders.{event_type}"], "events.orders.dead", "events.orders.>"),
        (["events.orders.created", "events.orders.{t}.x"], None, "events.orders.>"),
        (["events.orders"], None, "events.orders"),
        (["events.orders", "events.orders.x"], None, "events.>"),
        (["events.{aggregate_type}"], "dlq.events", None),
        (["{aggregate_type}.x"], None, None),
    ],
)
def test_subject_space_defaults_to_the_prefix_routes_share(
    routes: list[str], dead_letter: str | None, space: str | None
) -> None:
    when = "    when: {aggregate_type: a}\n"
    text = with_routes("".join(f'  - subject: "{r}"\n{when}' for r in routes))
    if dead_letter is not None:
        text += f"dead_letter: {{subject: {dead_letter}}}\n"
    config = parse_config(text, source="config.yaml", env={})
    assert config.nats.subject_space is None
    assert config.subject_space == space


def test_a_given_subject_space_is_used() -> None:
    text = BASE + "  subject_space: events.>\nroutes:\n  - subject: events.orders.{t}\n"
    assert parse_config(text, source="config.yaml", env={}).subject_space == "events.>"


def test_routes_outside_the_subject_space_are_refused() -> None:
    text = (
        BASE
        + "  subject_space: events.orders.>\n"
        + "routes:\n  - subject: events.orders.{t}\n    when: {t: a}\n"
        + "  - subject: events.{aggregate_type}.x\n"
        + "dead_letter: {subject: events.dlq}\n"
    )
    found = problems(text)
    assert len(found) == 2, found
    assert (
        "routes[1].subject: 'events.{aggregate_type}.x' can produce subjects outside "
        "nats.subject_space 'events.orders.>'" in found[0]
    )
    assert "dead_letter.subject: 'events.dlq' is outside nats.subject_space" in found[1]
