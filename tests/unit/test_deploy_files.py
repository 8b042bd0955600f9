"""The deployment files parse, hang together, and name only metrics the bridge exports.

No Docker engine, Kubernetes or systemd is needed: each file is loaded and checked for the
things that would make it fail or mislead at deploy time (a metric name that does not
exist, a config the bridge would refuse, a probe on the wrong path, a missing mount).
``promtool`` checks are run when it is installed (Debian: ``apt-get install prometheus``).
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, packages_distributions
from importlib.metadata import requires as distribution_requires
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import paths

from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.config.load import load_config, parse_config

REPO = paths.REPO
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "cdc-bridge-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "cdc-bridge-alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "cdc-bridge-alerts.test.yaml"
KUBERNETES = DEPLOY / "kubernetes" / "cdc-bridge.yaml"
SYSTEMD_UNIT = DEPLOY / "systemd" / "cdc-bridge.service"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CONFIG = REPO / "config" / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
PRODUCTION_DOC = REPO / "docs" / "production.md"

METRIC_NAME = re.compile(r"\bcdc_bridge_[a-z0-9_]+\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def exported_metric_names() -> set[str]:
    """Every series name the bridge's registry can expose, samples or not yet.

    A labelled counter has no sample until its first label value is used, so the
    ``# TYPE`` lines are the truth (counters appear there with their ``_total``).
    """
    text = Metrics().render().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    """The manifest's objects by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc}


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def every_parsed_file() -> Iterator[Path]:
    yield from sorted(DEPLOY.rglob("*.json"))
    yield from sorted(DEPLOY.rglob("*.yaml"))
    yield COMPOSE
    yield COMPOSE_CONFIG


# --- everything parses -------------------------------------------------------------------


@pytest.mark.parametrize("path", list(every_parsed_file()), ids=lambda p: p.name)
def test_file_parses(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".json":
        assert isinstance(json.loads(text), dict)
    else:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        assert documents and all(isinstance(doc, dict) for doc in documents)


# --- metric names ------------------------------------------------------------------------


def test_exported_names_include_the_issues_metrics() -> None:
    names = exported_metric_names()
    for name in (
        "cdc_bridge_events_published_total", "cdc_bridge_dead_letter_total",
        "cdc_bridge_publish_latency_seconds_bucket", "cdc_bridge_confirmed_lsn",
        "cdc_bridge_replication_lag_bytes", "cdc_bridge_slot_retained_bytes",
        "cdc_bridge_in_flight", "cdc_bridge_reconnects_total", "cdc_bridge_is_leader",
        "cdc_bridge_ready", "cdc_bridge_audit_missing", "cdc_bridge_audit_duplicated",
        "cdc_bridge_audit_last_run_timestamp_seconds",
        "cdc_bridge_atomic_batch_messages_count", "cdc_bridge_atomic_batch_splits_total",
    ):
        assert name in names


@pytest.mark.parametrize(
    ("source", "texts"),
    [
        ("dashboard", dashboard_exprs()),
        ("alerts", [rule["expr"] for rule in alert_rules()]),
        ("alert tests", [ALERT_TESTS.read_text()]),
        ("kubernetes", [KUBERNETES.read_text()]),
        ("docs", [PRODUCTION_DOC.read_text()]),
    ],
)
def test_every_metric_named_is_exported(source: str, texts: list[str]) -> None:
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used, f"{source} names no metric at all"
    unknown = sorted(used - exported_metric_names())
    assert not unknown, f"{source} uses metrics the bridge does not export: {unknown}"


def test_docs_list_every_exported_metric() -> None:
    documented = set(METRIC_NAME.findall(PRODUCTION_DOC.read_text()))
    families = {
        name for name in exported_metric_names()
        if not name.endswith(("_created", *_HISTOGRAM_SUFFIXES))
    }
    assert sorted(families - documented) == []


# --- Grafana -----------------------------------------------------------------------------


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "sum by (route) (rate(cdc_bridge_events_published_total",
        "sum by (reason) (rate(cdc_bridge_dead_letter_total",
        "histogram_quantile(0.5, sum by (le) (rate(cdc_bridge_publish_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(cdc_bridge_publish_latency_seconds_bucket",
        "cdc_bridge_replication_lag_bytes",
        "cdc_bridge_slot_retained_bytes",
        "cdc_bridge_in_flight",
        "cdc_bridge_is_leader",
        "cdc_bridge_reconnects_total",
    ):
        assert needle in exprs, needle
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and "datasource" in variables
        assert panel["targets"] and panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()


# --- Prometheus alerts -------------------------------------------------------------------


def test_alert_rules_cover_the_issue() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {
        "CdcBridgeSlotLagHigh", "CdcBridgeNotReady", "CdcBridgeDeadLetters",
        "CdcBridgeNoProgress", "CdcBridgeNoLeader", "CdcBridgeAuditFoundGaps",
    } <= rules.keys()
    assert "sum(cdc_bridge_is_leader)" in rules["CdcBridgeNoLeader"]["expr"]
    no_progress = rules["CdcBridgeNoProgress"]["expr"]
    assert "cdc_bridge_replication_lag_bytes" in no_progress
    assert "cdc_bridge_events_published_total" in no_progress
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # On PATH, or where `make test` puts it (scripts/ensure-promtool.sh): beside the
    # venv's python
    binary = shutil.which("promtool") or shutil.which("promtool", path=str(VENV_BIN))
    if binary is None:
        pytest.skip("promtool is not installed (`make test` fetches it into .venv/bin)")
    return subprocess.run(
        [binary, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=60
    )


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


# --- docker-compose ----------------------------------------------------------------------


def test_compose_services_and_health_checks() -> None:
    document = yaml.safe_load(COMPOSE.read_text())
    services = compose_services()
    assert {"postgres", "nats", "bridge", "demo-producer"} <= services.keys()
    for name, service in services.items():
        assert "healthcheck" in service, f"service {name} has no healthcheck"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in document["volumes"], f"{name}: volume {source} undeclared"

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    command = " ".join(postgres["command"])
    for setting in ("wal_level=logical", "max_replication_slots=", "max_wal_senders="):
        assert setting in command
    assert "./sql/outbox.sql:/docker-entrypoint-initdb.d/" in " ".join(postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    nats = services["nats"]
    version = re.match(r"nats:(\d+)\.(\d+)", nats["image"])
    assert version and (int(version[1]), int(version[2])) >= (2, 10)
    assert "-js" in nats["command"] and "-m" in nats["command"] and "8222" in nats["command"]
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])

    bridge = services["bridge"]
    assert bridge["build"] == "."
    assert "./config/compose.yaml:/etc/cdc-bridge/config.yaml:ro" in bridge["volumes"]
    assert bridge["command"] == ["run", "--config", "/etc/cdc-bridge/config.yaml"]
    assert "/healthz" in " ".join(bridge["healthcheck"]["test"])

    producer = services["demo-producer"]
    assert producer["entrypoint"] == ["python", "-m", "cdc_bridge.dev.demo"]
    assert producer["environment"]["CDC_BRIDGE_DSN"] == bridge["environment"]["CDC_BRIDGE_DSN"]


def python_c_programs(test: list[str] | str) -> Iterator[str]:
    """The program of each ``python -c PROGRAM`` in a health check command."""
    words = test if isinstance(test, list) else test.split()
    for index, word in enumerate(words[:-1]):
        if word == "-c" and index > 0 and words[index - 1] == "python":
            yield words[index + 1]


def test_compose_health_check_programs_compile() -> None:
    programs = [
        program
        for service in compose_services().values()
        for program in python_c_programs(service["healthcheck"]["test"])
    ]
    assert len(programs) >= 2  # the bridge's and the producer's
    for program in programs:
        ast.parse(program)


def test_compose_bridge_config_is_valid() -> None:
    environment = compose_services()["bridge"]["environment"]
    config = load_config(COMPOSE_CONFIG, env=environment)
    assert config.postgres.dsn == environment["CDC_BRIDGE_DSN"]
    assert list(config.nats.servers) == [environment["NATS_URL"]]
    assert config.http.listen == "0.0.0.0:8080"


# --- Dockerfile --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, arguments in instructions:
        by_keyword.setdefault(keyword, []).append(arguments)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    assert any("pip install ." in run for run in by_keyword["RUN"])
    user = by_keyword["USER"][-1]
    assert user not in ("root", "0")
    assert any("useradd" in run and user in run for run in by_keyword["RUN"])
    assert json.loads(by_keyword["ENTRYPOINT"][-1]) == ["cdc-bridge"]
    assert json.loads(by_keyword["CMD"][-1]) == [
        "run", "--config", "/etc/cdc-bridge/config.yaml"
    ]
    healthcheck = by_keyword["HEALTHCHECK"][-1]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    (program,) = python_c_programs(command)
    ast.parse(program)
    health_url = next(env for env in by_keyword["ENV"] if "CDC_BRIDGE_HEALTH_URL" in env)
    assert "/healthz" in health_url


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"], "cdc_bridge"} <= kept
    copied = {
        word.rstrip("/") for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" for word in arguments.split()[:-1]
    }
    assert copied <= kept, f"COPY of files .dockerignore leaves out: {copied - kept}"


def third_party_imports() -> set[str]:
    """Top-level modules the package imports that are not its own or the standard library's."""
    import sys

    modules: set[str] = set()
    for path in (REPO / "cdc_bridge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m != "cdc_bridge" and m not in sys.stdlib_module_names}


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_pip_install_brings_every_import() -> None:
    """What the Dockerfile's `pip install .` installs must cover what the code imports."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed = installed_with(project["dependencies"])
    providers = packages_distributions()
    missing = {
        module: providers.get(module, [module])
        for module in third_party_imports()
        if not any(normalized(dist) in installed for dist in providers.get(module, [module]))
    }
    assert not missing, f"imported but not installed by pyproject's dependencies: {missing}"


def requirement_name(requirement: str) -> str:
    return normalized(re.split(r"[\[<>=!~;\s(]", requirement.strip(), maxsplit=1)[0])


def installed_with(requirements: list[str]) -> set[str]:
    """The declared distributions and everything they require in turn (pydantic brings
    pydantic-core), as installed here; extras' optional requirements are left out."""
    found: set[str] = set()
    pending = [requirement_name(r) for r in requirements]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        try:
            nested = distribution_requires(name) or []
        except PackageNotFoundError:
            continue
        pending.extend(requirement_name(r) for r in nested if "extra ==" not in r)
    return found


# --- Kubernetes --------------------------------------------------------------------------


def test_kubernetes_manifest() -> None:
    objects = kubernetes_objects()
    assert {"ConfigMap", "Deployment", "Service"} <= objects.keys()
    deployment = objects["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # Only the leader is ever Ready: a RollingUpdate would wait forever for a second one.
    assert spec["strategy"]["type"] == "Recreate"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()

    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["run", "--config", "/etc/cdc-bridge/config.yaml"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] in ports
    env = {item["name"]: item for item in container["env"]}
    assert env["CDC_BRIDGE_DSN"]["valueFrom"]["secretKeyRef"]["key"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    mount = container["volumeMounts"][0]
    volume = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = objects["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    text = configmap["data"]["config.yaml"]
    environment = {"CDC_BRIDGE_DSN": "postgresql://u@db/app", "NATS_URL": env["NATS_URL"]["value"]}
    config = parse_config(text, source="ConfigMap cdc-bridge", env=environment)
    assert config.http.port == ports["http"]
    assert config.http.host == "0.0.0.0"  # probes come from the kubelet, not loopback


# --- systemd -----------------------------------------------------------------------------


def systemd_unit() -> Mapping[str, Mapping[str, str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(SYSTEMD_UNIT.read_text())
    return parser


def test_systemd_unit() -> None:
    unit = systemd_unit()
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["User"] not in ("", "root")
    assert service["EnvironmentFile"].startswith("/etc/cdc-bridge/")
    assert service["ExecStart"].split()[1:] == [
        "run", "--config", "/etc/cdc-bridge/config.yaml"
    ]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert service[hardening] in ("yes", "strict"), hardening
    assert unit["Install"]["WantedBy"] == "multi-user.target"
