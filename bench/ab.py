"""``python -m bench.ab TREE [TREE ...]``: the bridge's backlog drain, A/B between source trees.

For performance work on a noisy shared machine, where a full ``make bench`` is too coarse
to tell a 5% change from the noise: one PostgreSQL and nats-server, one backlog, one slot
per drain (created before the backlog, so every drain reads the same WAL), and the
bridges of the given checkouts drained in interleaved rounds (round 1: A, B; round 2: A,
B; ...), each as ``python -m cdc_bridge run`` with that tree first on ``PYTHONPATH`` (the
bench's own BridgeUnderTest). Each drain's bridge creates its stream itself, as in
``make bench``, so it runs the default path: atomic batches (``allow_atomic``).
Prints every drain and, per tree, the medians of events/s, steady events/s, events
per CPU-second and start-up (spawn to the first event stored), and of nats-server's and
PostgreSQL's µs of CPU per event and the machine's busy share during the drain. Compare
trees by their medians over several rounds, never one drain.

Typical use: ``git worktree add /tmp/before HEAD~1``, then
``python -m bench.ab /tmp/before . --rounds 5``. Bytecode is compiled for every tree first,
as ``python -m bench`` does for its own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import nats

from bench.bridge_run import STREAM, BridgeUnderTest, bridge_config
from bench.cli import compile_bytecode
from bench.report import micros, percent
from bench.serverload import per_event_us, server_load
from bench.stack import PUBLICATION, BenchStack, create_slot
from bench.streams import delete_stream, wait_for_messages
from bench.workload import OUTBOX_TABLE, commit_backlog

_MAX_SLOTS = 18  # the devstack's max_replication_slots is 20


@dataclass(frozen=True, slots=True)
class Drain:
    tree: str
    events_per_second: float  # spawn -> last stored, start-up included
    steady_per_second: float  # first stored -> last stored
    per_cpu_second: float
    cpu_wait_share: float
    startup_seconds: float  # spawn -> first stored: imports, config, connections, checks
    # Over the same window as events_per_second (bench/serverload.py); None: not known
    nats_us_per_event: float | None = None
    postgres_us_per_event: float | None = None
    machine_busy_share: float | None = None


async def _drain(stack: BenchStack, tree: Path, slot: str, events: int) -> Drain:
    nc = await nats.connect(stack.nats.url)
    try:
        # Made by the bridge, as in `make bench`: a stream made here without
        # allow_atomic would put it in per-message mode.
        config = bridge_config(
            dsn=stack.dsn, nats_url=stack.nats.url, slot=slot, publication=PUBLICATION
        )
        bridge = BridgeUnderTest(config, stack.work_dir(slot), source_root=tree)
        before = stack.server_snapshot()
        bridge.start()
        try:
            state = await wait_for_messages(
                nc, STREAM, events, 60 + events / 1000, bridge.check_alive
            )
            servers = server_load(before, stack.server_snapshot())
            cpu = bridge.cpu_use()
        finally:
            bridge.stop()
        await delete_stream(nc, STREAM)
    finally:
        await nc.close()
    assert state.first_ts is not None and state.last_ts is not None and cpu is not None
    total = state.last_ts - bridge.spawned_at
    return Drain(
        str(tree),
        events / total,
        events / (state.last_ts - state.first_ts),
        events / cpu.on_cpu_seconds,
        cpu.runqueue_wait_seconds / total,
        state.first_ts - bridge.spawned_at,
        per_event_us(servers.nats_cpu_seconds, events),
        per_event_us(servers.postgres_cpu_seconds, events),
        servers.machine_busy_share,
    )


async def run(trees: list[Path], rounds: int, events: int) -> list[Drain]:
    drains: list[Drain] = []
    with BenchStack() as stack:
        slots = [f"ab_{r}_{t}" for r in range(rounds) for t in range(len(trees))]
        for slot in slots:
            create_slot(stack.dsn, slot)
        commit_backlog(stack.dsn, OUTBOX_TABLE, events, 100)
        for r in range(rounds):
            for t, tree in enumerate(trees):
                drain = await _drain(stack, tree, f"ab_{r}_{t}", events)
                drains.append(drain)
                print(
                    f"round {r + 1} {drain.tree}: {drain.events_per_second:,.0f} events/s, "
                    f"steady {drain.steady_per_second:,.0f}, "
                    f"per CPU-s {drain.per_cpu_second:,.0f}, CPU wait {drain.cpu_wait_share:.0%}, "
                    f"start-up {drain.startup_seconds:.2f} s\n"
                    + _servers_line(
                        drain.nats_us_per_event,
                        drain.postgres_us_per_event,
                        drain.machine_busy_share,
                    ),
                    flush=True,
                )
    return drains


def _servers_line(nats_us: float | None, postgres_us: float | None, busy: float | None) -> str:
    return (
        f"  during it: nats {micros(nats_us)} µs/event, PG {micros(postgres_us)} µs/event, "
        f"machine busy {percent(busy)}"
    )


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts of this repository")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.trees]
    for tree in trees:
        if not (tree / "cdc_bridge" / "__init__.py").is_file():
            raise SystemExit(f"bench.ab: {tree} is not a checkout of cdc-bridge")
        compile_bytecode(tree)
    if args.rounds < 1 or args.rounds * len(trees) > _MAX_SLOTS:
        raise SystemExit(f"bench.ab: rounds x trees must be between 1 and {_MAX_SLOTS}")
    drains = asyncio.run(run(trees, args.rounds, args.events))
    print()
    for tree in dict.fromkeys(trees):  # a tree given twice is one tree with more drains
        mine = [d for d in drains if d.tree == str(tree)]
        print(
            f"median {tree}: "
            f"{statistics.median(d.events_per_second for d in mine):,.0f} events/s, "
            f"steady {statistics.median(d.steady_per_second for d in mine):,.0f}, "
            f"per CPU-s {statistics.median(d.per_cpu_second for d in mine):,.0f}, "
            f"start-up {statistics.median(d.startup_seconds for d in mine):.2f} s\n"
            + _servers_line(
                _median([d.nats_us_per_event for d in mine]),
                _median([d.postgres_us_per_event for d in mine]),
                _median([d.machine_busy_share for d in mine]),
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
