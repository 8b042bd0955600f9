"""Scenario 7: a three-node JetStream cluster loses its stream leader under load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from support.bridge import BridgeProcess
from support.chaos import Auditor, BridgeRunner, LoadGenerator, chaos_bridge_config
from support.waiting import wait_until

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.processes import free_port

NODES = 3


@pytest.fixture
def nats_cluster(devstack_tmp: Path) -> Iterator[dict[str, NatsServer]]:
    """Three nats-server processes routed to each other, JetStream on each; by server name."""
    cluster_ports = [free_port() for _ in range(NODES)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
    servers: dict[str, NatsServer] = {}
    for number, cluster_port in enumerate(cluster_ports):
        name = f"n{number}"
        servers[name] = NatsServer(
            devstack_tmp / name,
            extra_args=[
                "--server_name", name,
                "--cluster_name", "chaos",
                "--cluster", f"nats://127.0.0.1:{cluster_port}",
                "--routes", routes,
            ],
        )
    try:
        for server in servers.values():
            server.start()
        first = next(iter(servers.values()))
        wait_until(
            lambda: asyncio.run(_jetstream_ready(first.url)),
            timeout=30,
            interval=0.25,
            message="the cluster elected no JetStream meta leader",
        )
        yield servers
    finally:
        for server in servers.values():
            server.close()


async def _jetstream_ready(url: str) -> bool:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    try:
        await nc.jetstream(timeout=2).account_info()
    except (nats.errors.Error, TimeoutError):
        return False
    finally:
        await nc.close()
    return True


async def _stream_leader(url: str, stream: str) -> str | None:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    try:
        info = await nc.jetstream(timeout=2).stream_info(stream)
    except (nats.errors.Error, TimeoutError):
        return None
    finally:
        await nc.close()
    cluster = info.cluster
    return cluster.leader if cluster is not None else None


def _wait_for_leader(servers: dict[str, NatsServer], stream: str) -> str:
    """The name of the server leading ``stream`` now (asked of a running server)."""
    running = next(server for server in servers.values() if server.running)
    leader = wait_until(
        lambda: asyncio.run(_stream_leader(running.url, stream)),
        timeout=30,
        message=f"stream {stream} has no leader",
    )
    assert leader in servers, f"unknown leader {leader}"
    return leader


@pytest.mark.slow
def test_stream_leader_killed_under_load(
    chaos_dsn: str,
    nats_cluster: dict[str, NatsServer],
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
) -> None:
    urls = [server.url for server in nats_cluster.values()]
    stream = unique_name.upper()
    config = chaos_bridge_config(
        dsn=chaos_dsn, nats_url=urls[0], extra_servers=tuple(urls[1:]), name=unique_name,
        replicas=NODES, ack_timeout="3s",
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start(timeout=60)
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    load.start()
    try:
        for _ in range(2):
            load.wait_for_rows(500)
            leader = _wait_for_leader(nats_cluster, stream)
            mark = bridge.current.mark()
            nats_cluster[leader].kill()
            bridge.wait_streaming(since=mark, timeout=90)
            load.wait_for_rows(500)
            # Back again (same store): the next round kills whoever leads then
            nats_cluster[leader].start()
    finally:
        report = load.stop()
    survivor = next(server for server in nats_cluster.values() if server.running)
    result = Auditor(chaos_dsn, survivor.url, stream).audit("7 cluster stream leader kill -9")
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
