"""Metrics are kept only when HTTP serves them; without it, nothing is kept or imported."""

from __future__ import annotations

import subprocess
import sys

from cdc_bridge.bridge.metrics import Metrics, NoMetrics
from cdc_bridge.core.tracker import Transaction


def instruments(metrics: Metrics) -> set[str]:
    return {name for name in vars(metrics) if not name.startswith("_") and name != "registry"}


def test_no_metrics_takes_every_update_the_bridge_makes() -> None:
    unmeasured = NoMetrics()
    for name in instruments(Metrics()):  # every instrument, however the bridge touches it
        instrument = getattr(unmeasured, name)
        instrument.labels("x").inc()
        instrument.inc(2)
        instrument.set(1)
        instrument.set_function(lambda: 0.0)
        instrument.observe(0.5)
        instrument.clear()
    unmeasured.acked("route", 3)
    unmeasured.transaction_acked(Transaction(final_lsn=1, commit_time=1))
    unmeasured.message_ignored("prefix")
    unmeasured.dead_lettered("no route")
    unmeasured.standbys([("standby", True, 0)])
    unmeasured.audited(0, 0)
    assert unmeasured.render() == b""


def test_metrics_with_http_keep_every_series() -> None:
    metrics = Metrics()
    metrics.acked("tickets", 3)
    text = metrics.render().decode()
    assert 'cdc_bridge_events_published_total{route="tickets"} 3.0' in text


def test_the_run_path_without_http_does_not_import_prometheus_client() -> None:
    script = (
        "import sys\n"
        "import cdc_bridge.cli.run, cdc_bridge.bridge.supervisor, cdc_bridge.bridge.http\n"
        "from cdc_bridge.bridge.metrics import NoMetrics\n"
        "NoMetrics().reconnects.labels('postgres').inc()\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
