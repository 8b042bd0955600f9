"""``python -m bench``: run every stage, print the table, save the JSON."""

from __future__ import annotations

import argparse
import asyncio
import compileall
from pathlib import Path

from bench.children import REPO_ROOT
from bench.modes import ModeSettings
from bench.report import render_table, save_json
from bench.scenario import Settings, run_bench

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_EVENTS = 10_000
QUICK_LATENCY_SECONDS = 2.0
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 1
MODE_EVENTS = 20_000
QUICK_MODE_EVENTS = 2_000
MODE_TX_SIZES = "1,10,100,1000"
WRITER_TX_SIZE = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="cdc-bridge against pg_recvlogical, a plain publish_async relay and a "
        "polling relay, on throwaway PostgreSQL and nats-server (see bench/README.md).",
    )
    parser.add_argument("--events", type=int, default=100_000, help="backlog size (100000)")
    parser.add_argument("--tx-size", type=int, default=100, help="events per transaction (100)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_EVENTS} events, {QUICK_LATENCY_SECONDS:g} s latency runs, "
        f"{QUICK_ROUNDS} round (unless --rounds says otherwise); not saved under "
        "bench/results/ (unless --json says where)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds of the WAL drain stages, each reported as its median "
        f"round ({DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--latency-rate", type=float, default=1000.0, help="events/s of the latency runs (1000)"
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="length of each latency run (10)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the result here instead of bench/results/<UTC timestamp>.json",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the bridge with py-spy during the drain; collapsed stacks go to DIR "
        "(skews the figures: not for the history table)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the servers' folder (data, logs) afterwards"
    )
    parser.add_argument(
        "--mode-events",
        type=int,
        help=f"backlog size of each atomic/per-message drain ({MODE_EVENTS}; "
        f"{QUICK_MODE_EVENTS} with --quick); 0 skips those drains",
    )
    parser.add_argument(
        "--mode-tx-sizes",
        default=MODE_TX_SIZES,
        help=f"transaction sizes of the atomic/per-message drains ({MODE_TX_SIZES})",
    )
    parser.add_argument(
        "--writer-tx-size",
        type=int,
        default=WRITER_TX_SIZE,
        help=f"the transaction size also drained with another writer in the stream "
        f"({WRITER_TX_SIZE}; 0: none)",
    )
    parser.add_argument(
        "--writer-rate",
        type=float,
        default=500.0,
        help="messages/s of the other writer (500)",
    )
    return parser


def compile_bytecode(root: Path = REPO_ROOT) -> None:
    """Byte-compile cdc_bridge and bench of the checkout at ``root``, as ``pip install``
    does for an installed package.

    Start-up counts in every drain figure. Run from a checkout (an editable install),
    every child process would otherwise compile the sources again on each start
    wherever bytecode is not written (PYTHONDONTWRITEBYTECODE, a read-only tree), and
    measure the compiler rather than the bridge.
    """
    for package in ("cdc_bridge", "bench"):
        compileall.compile_dir(root / package, quiet=1)


def _mode_settings(args: argparse.Namespace, rounds: int) -> ModeSettings | None:
    events = args.mode_events
    if events is None:
        events = QUICK_MODE_EVENTS if args.quick else MODE_EVENTS
    if events == 0:
        return None
    try:
        tx_sizes = tuple(int(size) for size in args.mode_tx_sizes.split(",") if size.strip())
    except ValueError:
        raise SystemExit("bench: --mode-tx-sizes takes sizes separated by commas") from None
    if events < 0 or not tx_sizes or min(tx_sizes) < 1 or args.writer_rate <= 0:
        raise SystemExit("bench: --mode-events, --mode-tx-sizes and --writer-rate must be positive")
    writer_tx_size = args.writer_tx_size or None
    if writer_tx_size is not None and writer_tx_size not in tx_sizes:
        raise SystemExit("bench: --writer-tx-size must be one of --mode-tx-sizes (or 0)")
    return ModeSettings(
        events=events,
        tx_sizes=tx_sizes,
        writer_tx_size=writer_tx_size,
        writer_rate=args.writer_rate,
        rounds=rounds,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    events = QUICK_EVENTS if args.quick else args.events
    rounds = args.rounds
    if rounds is None:
        rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if events < 1 or args.tx_size < 1 or rounds < 1:
        raise SystemExit("bench: --events, --tx-size and --rounds must be at least 1")
    modes = _mode_settings(args, rounds)
    settings = Settings(
        events=events,
        tx_size=args.tx_size,
        latency_rate=args.latency_rate,
        latency_seconds=QUICK_LATENCY_SECONDS if args.quick else args.latency_seconds,
        profile_dir=args.profile,
        keep=args.keep,
        rounds=rounds,
        modes=modes,
    )
    compile_bytecode()
    result = asyncio.run(run_bench(settings))
    print(render_table(result))
    target: Path | None = args.json
    if target is None and not args.quick:
        target = RESULTS_DIR / f"{result.timestamp.replace(':', '')}.json"
    if target is not None:
        save_json(result, target)
        print(f"\nsaved {target}")
    return 0
