"""``python -m bench``: run every stage, print the table, save the JSON."""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
from pathlib import Path

from bench.children import REPO_ROOT
from bench.formats import FormatSettings
from bench.modes import ModeSettings
from bench.report import render_table, save_json
from bench.scenario import Settings, run_bench, run_formats_only

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_EVENTS = 10_000
QUICK_LATENCY_SECONDS = 2.0
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 1
MODE_EVENTS = 20_000
QUICK_MODE_EVENTS = 2_000
MODE_TX_SIZES = "1,10,100,1000"
WRITER_TX_SIZE = 10
FORMAT_EVENTS = 20_000
QUICK_FORMAT_EVENTS = 2_000
FORMAT_TX_SIZE = 100


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
        "--native",
        action="store_true",
        help="with --profile: sample native frames too (py-spy --native), which names the "
        "functions mypyc compiled; pauses the bridge for each sample",
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
    add_format_options(parser)
    return parser


def add_format_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only-formats",
        action="store_true",
        help="run the format drains only (--format-events, --format-tx-size, --rounds)",
    )
    parser.add_argument(
        "--format-events",
        type=int,
        help=f"backlog size of the format drains (default, CloudEvents, Debezium, payload "
        f"paths; {FORMAT_EVENTS}, {QUICK_FORMAT_EVENTS} with --quick); 0 skips them",
    )
    parser.add_argument(
        "--format-tx-size",
        type=int,
        default=FORMAT_TX_SIZE,
        help=f"events per transaction of the format drains ({FORMAT_TX_SIZE})",
    )


def format_settings(args: argparse.Namespace, rounds: int) -> FormatSettings | None:
    events = args.format_events
    if events is None:
        events = QUICK_FORMAT_EVENTS if args.quick else FORMAT_EVENTS
    if events == 0:
        return None
    if events < 2 or args.format_tx_size < 1:
        raise SystemExit("bench: --format-events must be at least 2, --format-tx-size 1")
    return FormatSettings(events=events, tx_size=args.format_tx_size, rounds=rounds)


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
    if args.only_formats:
        return _main_formats_only(args, rounds)
    modes = _mode_settings(args, rounds)
    settings = Settings(
        events=events,
        tx_size=args.tx_size,
        latency_rate=args.latency_rate,
        latency_seconds=QUICK_LATENCY_SECONDS if args.quick else args.latency_seconds,
        profile_dir=args.profile,
        profile_native=args.native,
        keep=args.keep,
        rounds=rounds,
        modes=modes,
        formats=format_settings(args, rounds),
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


def _main_formats_only(args: argparse.Namespace, rounds: int) -> int:
    formats = format_settings(args, rounds)
    if formats is None:
        raise SystemExit("bench: --only-formats with --format-events 0 runs nothing")
    compile_bytecode()
    result = asyncio.run(run_formats_only(formats, keep=args.keep))
    table = result.pop("formats_table")
    print(
        f"cdc-bridge format drains {result['timestamp']}; {result['machine']['nproc']} CPUs "
        f"({result['machine']['cpu_model']}), git {result['machine']['git_revision']}, "
        f"load average at the end {result['machine']['loadavg_at_end']}"
    )
    print("\n".join(table))
    target: Path | None = args.json
    if target is None and not args.quick:
        target = RESULTS_DIR / f"formats-{result['timestamp'].replace(':', '')}.json"
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nsaved {target}")
    return 0
