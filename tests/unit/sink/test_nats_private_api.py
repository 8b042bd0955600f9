"""The few private parts of nats-py's Client the bridge relies on are still there.

nats-py is pinned to a minor version range (pyproject.toml); these tests are what to
run before widening it. Each failure says what changed and where the bridge uses it,
so an upgrade cannot silently break publishing or the TLS guard.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.client import ServerVersion

from cdc_bridge.sink.connect import server_version_text

NATS_PY = getattr(nats, "__version__", "?")


def _parameters(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # sink/wire.py: Frames.write appends a whole batch of HPUB frames to the pending
        # buffer, in order with the client's own commands...
        ("_send_command", [("self", inspect.Parameter.empty), ("cmd", inspect.Parameter.empty),
                           ("priority", False)]),
        # ...and then has the client's flusher write it out.
        ("_flush_pending", [("self", inspect.Parameter.empty), ("force_flush", False)]),
    ],
)
def test_the_private_methods_wire_py_writes_with_are_unchanged(
    name: str, expected: list[tuple[str, Any]]
) -> None:
    method = getattr(NatsClient, name, None)
    assert method is not None, (
        f"nats-py {NATS_PY} has no Client.{name}: cdc_bridge/sink/wire.py (Frames.write) "
        "cannot publish with it; adapt wire.py before widening the nats-py pin"
    )
    assert inspect.iscoroutinefunction(method), (
        f"nats-py {NATS_PY}: Client.{name} is no longer a coroutine function; "
        "cdc_bridge/sink/wire.py awaits it"
    )
    assert _parameters(method) == expected, (
        f"nats-py {NATS_PY} changed Client.{name}{inspect.signature(method)}; "
        f"cdc_bridge/sink/wire.py calls it as {name}({', '.join(n for n, _ in expected[1:])}) "
        "with defaults: check what it does now, adapt wire.py, then widen the pin"
    )


def test_the_server_info_the_tls_guard_reads_is_unchanged() -> None:
    # sink/auth.py (_server_required_tls) reads the INFO dict nats-py keeps, because
    # nats-py upgrades to TLS exactly when it says tls_required, and says so nowhere public.
    info = getattr(NatsClient(), "_server_info", None)
    assert isinstance(info, dict), (
        f"nats-py {NATS_PY}: Client._server_info is gone (or not a dict): "
        "cdc_bridge/sink/auth.py cannot tell whether the connection is TLS; adapt it"
    )
    connect = inspect.getsource(NatsClient._process_connect_init)
    assert 'self._server_info["tls_required"]' in connect, (
        f"nats-py {NATS_PY} no longer decides the TLS upgrade from _server_info's "
        "tls_required: check cdc_bridge/sink/auth.py's guard still matches what it does"
    )


@pytest.mark.parametrize(
    ("version", "text"),
    [
        ("2.11.4", "2.11.4"),
        ("2.12.0-RC.1", "2.12.0-RC.1"),
        ("2.14.0-dev+abc123", "2.14.0-dev+abc123"),
        ("0.0.0-unknown", "0.0.0-unknown"),  # what nats-py reports before INFO
        ("not a version", "unknown"),
    ],
)
def test_server_version_text_comes_from_the_public_api(version: str, text: str) -> None:
    assert server_version_text(ServerVersion(version)) == text
