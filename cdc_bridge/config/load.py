"""Loading a config file: read -> expand env -> parse (defaults, types) -> validate.

Every problem in the file becomes one line, ``config.yaml:12: routes[1].subject:
<message>``, and all problems of a stage are reported at once so a broken file is
fixed in one round. Secrets never appear in those lines: values under keys named like
a DSN, password or token are shown as ``<redacted>``, and any echoed URL loses its
password.

The stages, one function each:
  read      YAML -> plain data, each key's line recorded (yaml_source.read_yaml), and
            refused beyond the size limits (limits.py)
  expand    ``${VAR}`` and ``${VAR:-default}`` in values (yaml_source.expand_env)
  parse     into the frozen BridgeConfig (model.py): the models' defaults fill in what
            the file leaves out, schema.py's key types check each key
  validate  what spans keys or leaves the file: the route payloads' tables, the
            secret, credential and TLS files (secrets.py), read here, once
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from cdc_bridge.config.limits import MAX_FILE_BYTES, file_size_problem, routes_problem
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.config.problems import ConfigError, KeyPath, Problems
from cdc_bridge.config.schema import CHANGE_PAYLOADS, PLAIN_FORMAT
from cdc_bridge.config.secrets import read_secrets
from cdc_bridge.config.validation import add_validation_problems
from cdc_bridge.config.yaml_source import expand_env, read_yaml
from cdc_bridge.core.redaction import shown_value
from cdc_bridge.core.subjects import filter_within


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read and validate a config file (``env`` defaults to the process environment)."""
    try:
        # One character past the limit is enough for read() to refuse the file, which
        # may be huge (or endless: /dev/zero); even then at most 4 bytes a character.
        with Path(path).open(encoding="utf-8") as file:
            text = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config file is not UTF-8 text ({exc.reason})"]) from exc
    return parse_config(text, source=str(path), env=env)


def parse_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Validate config text; ConfigError lists every problem, one line each."""
    problems = Problems(source)
    data = read(text, problems)
    failed: set[KeyPath] = set()  # keys whose ${VAR} failed: reported once, by expand
    data = expand(data, os.environ if env is None else env, problems, failed)
    config = parse(data, problems, failed)
    validate(config, problems)
    return config


def read(text: str, problems: Problems) -> dict[str, object]:
    too_large = file_size_problem(len(text.encode("utf-8")))
    if too_large is not None:  # refused before parsing: the parser's memory is its size
        problems.add((), too_large)
        problems.raise_if_any()
    data = read_yaml(text, problems)
    problems.raise_if_any()
    if not isinstance(data, dict):
        what = "the file is empty" if data is None else f"found {shown_value(data)}"
        problems.add((), f"expected a mapping of sections (postgres:, nats:, routes: ...); {what}")
        problems.raise_if_any()
    return typing.cast(dict[str, object], data)


def expand(
    data: dict[str, object], env: Mapping[str, str], problems: Problems, failed: set[KeyPath]
) -> dict[str, object]:
    """Problems are raised with parse's, so that a file is fixed in one round."""
    return typing.cast(dict[str, object], expand_env(data, (), env, problems, failed))


def parse(data: dict[str, object], problems: Problems, failed: set[KeyPath]) -> BridgeConfig:
    _check_route_count(data.get("routes"), problems)
    _check_routes(data.get("routes"), problems)
    try:
        config = BridgeConfig.model_validate(data)
    except ValidationError as exc:
        add_validation_problems(exc, data, problems, failed)
        problems.raise_if_any()
        raise AssertionError("validation failed without problems") from exc
    return config


def validate(config: BridgeConfig, problems: Problems) -> None:
    """Checks across sections, then the files the config names: read only once the
    rest holds, and kept in the config for the daemon's lifetime."""
    _check_change_routes(config, problems)
    _check_slot_recovery(config, problems)
    _check_standby_source(config, problems)
    _check_cloudevents_headers(config, problems)
    _check_subject_space(config, problems)
    _check_audit(config, problems)
    problems.raise_if_any()
    postgres_password, nats_auth = read_secrets(config, problems)
    problems.raise_if_any()
    config.hold_secrets(postgres_password, nats_auth)


def _check_route_count(routes: object, problems: Problems) -> None:
    """Refused before the routes are validated, which is what takes the time: each
    becomes a model with its templates parsed."""
    too_many = routes_problem(len(routes)) if isinstance(routes, list) else None
    if too_many is not None:
        problems.add(("routes",), too_many)
        problems.raise_if_any()


def _check_routes(routes: object, problems: Problems) -> None:
    """Checks across routes. They read the raw data so that they are reported in the
    same round as the per-key problems; anything malformed there is skipped here."""
    if not isinstance(routes, list):
        return
    catch_all: int | None = None
    seen_names: dict[str, int] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        if catch_all is not None:
            problems.add(
                ("routes", index),
                f"can never match: routes[{catch_all}] has no `when` and catches every row",
            )
        elif route.get("when") is None:
            catch_all = index
        name = route.get("name") or f"routes[{index}]"
        if not isinstance(name, str):
            continue
        if name in seen_names:
            problems.add(
                ("routes", index, "name"),
                f"{name!r} is also the name of routes[{seen_names[name]}]",
            )
        seen_names.setdefault(name, index)


def _check_standby_source(config: BridgeConfig, problems: Problems) -> None:
    pg = config.postgres
    if pg.source == "standby" and pg.primary_dsn is None:
        problems.add(
            ("postgres", "source"),
            "a standby source needs postgres.primary_dsn too (the publication and standby "
            "snapshots are made on the primary): add it, or set postgres.source: primary",
        )


def _check_slot_recovery(config: BridgeConfig, problems: Problems) -> None:
    if config.postgres.on_slot_lost == "recover" and config.outbox.message_prefixes:
        problems.add(
            ("postgres", "on_slot_lost"),
            "`recover` republishes outbox rows from the table, and logical messages "
            "(outbox.message_prefixes) leave no rows to recover from: use `fail`",
        )


def _check_change_routes(config: BridgeConfig, problems: Problems) -> None:
    """`payload: change` (or `debezium`) publishes change tables' changes: without any
    it can only fail."""
    if config.outbox.change_tables:
        return
    for index, route in enumerate(config.routes):
        if route.payload in CHANGE_PAYLOADS:
            problems.add(
                ("routes", index, "payload"),
                f"`{route.payload}` publishes changes of outbox.change_tables, and none are listed",
            )


def _check_cloudevents_headers(config: BridgeConfig, problems: Problems) -> None:
    """A CloudEvent's ce-* and content-type headers are its attributes: a route header of
    that name would give the event a second, contradicting value."""
    for index, route in enumerate(config.routes):
        if route.format == PLAIN_FORMAT:
            continue
        for name, _ in route.headers:
            lowered = name.lower()
            if lowered.startswith("ce-") or lowered == "content-type":
                problems.add(
                    ("routes", index, "headers", name),
                    f"{name} is set by the CloudEvents format ({route.format}); set the "
                    "attribute under the route's `cloudevents` key instead",
                )


def _check_subject_space(config: BridgeConfig, problems: Problems) -> None:
    """What the bridge publishes must lie inside its space: the order guard and
    reconcile look only there, so a subject outside would be unguarded and unseen."""
    space = config.nats.subject_space
    if space is None:
        return
    for index, route in enumerate(config.routes):
        produced = "*".join(route.subject_template.literals)
        if not filter_within(produced, space):
            problems.add(
                ("routes", index, "subject"),
                f"{route.subject!r} can produce subjects outside nats.subject_space "
                f"{space!r}: widen the space or change the subject",
            )
    if config.dead_letter is not None and not filter_within(config.dead_letter.subject, space):
        problems.add(
            ("dead_letter", "subject"),
            f"{config.dead_letter.subject!r} is outside nats.subject_space {space!r}: "
            "widen the space or change the subject",
        )


def _check_audit(config: BridgeConfig, problems: Problems) -> None:
    """The continuous audit compares outbox rows by one id column, in a window that
    must not be empty: refused at load rather than warned about every interval."""
    audit = config.audit
    if not audit.interval:
        return
    if not config.outbox.tables:
        problems.add(
            ("audit", "interval"),
            "nothing to audit: the config names no outbox table (outbox.table); logical "
            "messages (outbox.message_prefixes) leave no rows to compare the stream with",
        )
    columns = {route.id for route in config.routes} | {config.outbox.id_column}
    if len(columns) > 1:
        problems.add(
            ("audit", "interval"),
            f"routes take Nats-Msg-Id from different columns ({', '.join(sorted(columns))}): "
            "the audit compares by one id column; give every route the same `id` (or none, "
            "for outbox.id_column)",
        )
    if audit.settle >= audit.window:
        problems.add(
            ("audit", "settle"),
            "must be shorter than audit.window: each run looks at the rows created from "
            "`window` ago until `settle` ago",
        )
