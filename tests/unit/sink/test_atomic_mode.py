"""The atomic-mode decision (issue 30): nats.atomic_transactions, the server's version and
the stream's allow_atomic. `run` and `check` both take it from here."""

from __future__ import annotations

from typing import Literal

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.client import ServerVersion
from nats.js.api import StreamConfig, StreamInfo, StreamState

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import NatsConfig
from cdc_bridge.core.errors import FatalError
from cdc_bridge.sink.atomic_mode import AtomicMode, atomic_mode, decide_atomic_mode

Setting = Literal["auto", True, False]
OLD, FIRST, NEW = (2, 11, 9), (2, 12, 0), (2, 15, 1)


@pytest.mark.parametrize("version", [FIRST, NEW])
def test_auto_is_on_where_the_server_and_the_stream_allow_it(version: tuple[int, int, int]) -> None:
    mode = decide_atomic_mode("auto", version, "EVENTS", True)
    text = ".".join(map(str, version))
    assert mode == AtomicMode(True, f"nats-server {text} and stream EVENTS allow atomic batches")


def test_auto_is_off_on_a_server_before_2_12() -> None:
    mode = decide_atomic_mode("auto", OLD, "EVENTS", True)
    assert mode == AtomicMode(
        False,
        "nats-server 2.11.9 has no atomic batches (2.12+ needed): upgrade the NATS servers, or "
        "set nats.atomic_transactions: false to say per-message mode is meant",
    )


@pytest.mark.parametrize("version", [FIRST, NEW])
def test_auto_is_off_on_a_stream_without_allow_atomic(version: tuple[int, int, int]) -> None:
    mode = decide_atomic_mode("auto", version, "EVENTS", False)
    assert not mode.enabled
    assert mode.reason == (
        "stream EVENTS has allow_atomic off: enable allow_atomic in the stream's config (the "
        "bridge never changes an existing stream), or set nats.atomic_transactions: false to "
        "say per-message mode is meant"
    )


def test_a_server_whose_version_is_not_semver_is_taken_as_too_old() -> None:
    mode = decide_atomic_mode("auto", None, "EVENTS", True)
    assert not mode.enabled
    assert mode.reason.startswith("nats-server (version unknown) has no atomic batches")
    with pytest.raises(FatalError, match=r"^nats-server \(version unknown\) has no atomic"):
        decide_atomic_mode(True, None, "EVENTS", True)


@pytest.mark.parametrize("version", [OLD, FIRST, NEW])
@pytest.mark.parametrize("allows", [True, False])
def test_false_is_off_whatever_the_server_and_stream(
    version: tuple[int, int, int], allows: bool
) -> None:
    assert decide_atomic_mode(False, version, "EVENTS", allows) == AtomicMode(
        False, "nats.atomic_transactions is false"
    )


@pytest.mark.parametrize("version", [FIRST, NEW])
def test_true_is_on_where_it_can_be(version: tuple[int, int, int]) -> None:
    assert decide_atomic_mode(True, version, "EVENTS", True).enabled


@pytest.mark.parametrize("allows", [True, False])
def test_true_on_an_old_server_stops_with_the_version_and_the_fix(allows: bool) -> None:
    with pytest.raises(FatalError) as caught:
        decide_atomic_mode(True, OLD, "EVENTS", allows)
    assert str(caught.value) == (
        "nats-server 2.11.9 has no atomic batches (2.12+ needed), and "
        "nats.atomic_transactions is true: upgrade the NATS servers, or set "
        "nats.atomic_transactions: auto (atomic batches where they can be had) or false"
    )


@pytest.mark.parametrize("version", [FIRST, NEW])
def test_true_on_a_stream_without_allow_atomic_stops_naming_the_stream(
    version: tuple[int, int, int],
) -> None:
    with pytest.raises(FatalError) as caught:
        decide_atomic_mode(True, version, "EVENTS", False)
    assert str(caught.value) == (
        "stream EVENTS has allow_atomic off, and nats.atomic_transactions is true: enable "
        "allow_atomic in the stream's config (the bridge never changes an existing stream), "
        "or set nats.atomic_transactions: auto (atomic batches where they can be had) or false"
    )
    assert "\n" not in str(caught.value)


def test_a_stream_yet_to_be_created_is_judged_by_nats_stream_allow_atomic() -> None:
    on = decide_atomic_mode("auto", NEW, "EVENTS", True, stream_exists=False)
    assert on == AtomicMode(
        True,
        "nats-server 2.15.1 and stream EVENTS (created with allow_atomic) allow atomic batches",
    )
    off = decide_atomic_mode("auto", NEW, "EVENTS", False, stream_exists=False)
    assert off.reason.startswith(
        "stream EVENTS is to be created with nats.stream.allow_atomic false: set "
        "nats.stream.allow_atomic: true, or set nats.atomic_transactions: false"
    )
    with pytest.raises(FatalError, match=r"set nats\.stream\.allow_atomic: true"):
        decide_atomic_mode(True, NEW, "EVENTS", False, stream_exists=False)


# --- atomic_mode: the same decision from a connection and a StreamInfo --------------------


class Connected(NatsClient):
    """A client that reports a server version and holds no connection."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self._version = ServerVersion(version)

    @property
    def connected_server_version(self) -> ServerVersion:
        return self._version


def config(setting: str, allow_atomic: bool = True) -> NatsConfig:
    text = (
        'postgres: {dsn: "postgresql://x@h/d"}\n'
        "nats:\n  servers: [nats://h:4222]\n"
        f"  atomic_transactions: {setting}\n"
        f"  stream: {{name: EVENTS, subjects: [e.>], allow_atomic: {str(allow_atomic).lower()}}}\n"
        "routes: [{subject: e.x}]\n"
    )
    return parse_config(text, env={}).nats


def info(allow_atomic: bool | None) -> StreamInfo:
    return StreamInfo(
        config=StreamConfig(name="EVENTS", allow_atomic=allow_atomic),
        state=StreamState(messages=0, bytes=0, first_seq=0, last_seq=0, consumer_count=0),
    )


@pytest.mark.parametrize(
    ("version", "allow", "setting", "enabled"),
    [
        ("2.11.9", True, "auto", False),
        ("2.12.0", True, "auto", True),
        ("2.15.1", True, "auto", True),
        ("2.15.1", False, "auto", False),
        ("2.15.1", None, "auto", False),  # the server left it out: off
        ("2.15.1", True, "false", False),
        ("2.12.0", True, "true", True),
        ("2.12.0-RC.1", True, "auto", True),
        ("2.15.1", None, "true", None),  # None: FatalError
        ("2.11.9", True, "true", None),
    ],
)
async def test_atomic_mode_reads_the_stream_and_the_connected_server(
    version: str, allow: bool | None, setting: str, enabled: bool | None
) -> None:
    nats_config = config(setting)
    if enabled is None:
        with pytest.raises(FatalError):
            await atomic_mode(Connected(version), nats_config, info(allow))
        return
    mode = await atomic_mode(Connected(version), nats_config, info(allow))
    assert mode.enabled is enabled


@pytest.mark.parametrize("allow_atomic", [True, False])
async def test_without_the_stream_atomic_mode_reads_the_stream_it_will_create(
    allow_atomic: bool,
) -> None:
    nats_config = config("auto", allow_atomic)
    mode = await atomic_mode(Connected("2.15.1"), nats_config, None)
    assert mode.enabled is allow_atomic
    assert "created with" in mode.reason or "to be created" in mode.reason


async def test_a_version_that_is_not_semver_is_unknown() -> None:
    mode = await atomic_mode(Connected("nightly"), config("auto"), info(True))
    assert not mode.enabled and "(version unknown)" in mode.reason
