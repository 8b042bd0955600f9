"""The `cdc-bridge` command line: one small function per command.

Exit codes: 0 ok, 1 failed or refused, 2 usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from cdc_bridge import __version__

log = structlog.get_logger("cdc_bridge.cli")


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _print_error(message: str) -> int:
    print(f"cdc-bridge: {message}", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from cdc_bridge.bridge.logs import configure_logging
    from cdc_bridge.bridge.supervisor import install_signal_handlers, run_bridge
    from cdc_bridge.config.load import load_config
    from cdc_bridge.config.problems import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _print_error(f"invalid configuration:\n{exc}")
    except OSError as exc:
        return _print_error(f"cannot read {args.config}: {exc.strerror}")
    configure_logging(
        args.log_format or config.logging.format,
        args.log_level or config.logging.level,
        redactor=config.redactor(),  # masks the secrets it holds wherever they appear
    )

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await run_bridge(config, stop)

    # Everything made so far (modules, config) lives as long as the process: keep it
    # out of the cyclic collector's full passes, which would otherwise walk it again
    # and again while the bridge streams.
    gc.freeze()
    return asyncio.run(main())


def cmd_dev(args: argparse.Namespace) -> int:
    from cdc_bridge.bridge.logs import configure_logging
    from cdc_bridge.bridge.supervisor import install_signal_handlers, run_bridge
    from cdc_bridge.config.load import load_config
    from cdc_bridge.config.problems import ConfigError
    from cdc_bridge.dev.demo import print_events, produce_tickets
    from cdc_bridge.dev.devstack import DevStack, DevstackError, free_port, outbox_schema_sql
    from cdc_bridge.source.setup import prepare_postgres

    configure_logging(args.log_format or "console", args.log_level or "info")
    stack = DevStack(Path(args.dir))
    try:
        print(f"starting a throwaway PostgreSQL and nats-server under {args.dir} ...")
        stack.start()
    except DevstackError as exc:
        return _print_error(str(exc))
    try:
        import psycopg

        with psycopg.connect(stack.postgres.dsn(), autocommit=True) as conn:
            conn.execute(outbox_schema_sql())
        # The HTTP endpoint on 8080 when that is free, else on any free port: a busy
        # 8080 on a laptop must not stop the demo.
        http_listen = f"127.0.0.1:{8080 if _port_is_free(8080) else free_port()}"
        env = {**os.environ, **stack.environment(), "CDC_BRIDGE_DEV_HTTP": http_listen}
        try:
            config = load_config(args.config, env=env)
        except ConfigError as exc:
            return _print_error(f"invalid configuration:\n{exc}")
        print(
            "\n  PostgreSQL  "
            + stack.postgres.dsn()
            + "\n  NATS        "
            + stack.nats.url
            + "\n  HTTP        http://"
            + (config.http.listen or "(off)")
            + "/status"
            + "\n  try:        psql '"
            + stack.postgres.dsn()
            + "' -c \"INSERT INTO outbox "
            "(aggregate_type, aggregate_id, event_type, payload) VALUES "
            "('ticket', 'T-1', 'created', '{}')\"" + "\n  Ctrl-C stops everything.\n",
            flush=True,
        )

        async def main() -> int:
            stop = asyncio.Event()
            install_signal_handlers(stop)
            extras = []
            if args.demo:
                # The slot must exist before the first demo event commits, or it is missed.
                await prepare_postgres(config)  # returns (slot, wal head)
                extras.append(asyncio.create_task(produce_tickets(stack.postgres.dsn())))
                extras.append(asyncio.create_task(print_events(stack.nats.url)))
            try:
                return await run_bridge(config, stop)
            finally:
                for task in extras:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

        return asyncio.run(main())
    finally:
        stack.close()


def cmd_routes_test(args: argparse.Namespace) -> int:
    """Exit 0 routed, 1 dead-lettered or poison, 2 when the inputs are unusable."""
    import json

    from cdc_bridge.config.load import load_config
    from cdc_bridge.config.problems import ConfigError
    from cdc_bridge.routing.preview import preview_row, resolve_table, row_from_json

    try:
        config = load_config(args.config)
        table = resolve_table(config, args.table)
        row = row_from_json(args.row)
    except ConfigError as exc:
        print(f"cdc-bridge: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"cdc-bridge: {exc}", file=sys.stderr)
        return 2
    preview = preview_row(config, table, row, max_payload=args.max_payload)
    if args.json:
        print(json.dumps(preview.as_json(), ensure_ascii=False, sort_keys=True))
    else:
        print("\n".join(preview.lines()))
    return 0 if preview.outcome == "routed" else 1


def cmd_outbox_prune(args: argparse.Namespace) -> int:
    from cdc_bridge.config.load import load_config
    from cdc_bridge.ops.errors import run_command
    from cdc_bridge.ops.prune import prune_command

    async def main() -> int:
        config = load_config(args.config)
        return await prune_command(
            config,
            args.dsn or config.postgres.dsn,
            older_than=args.older_than,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
        )

    return run_command(main)


def _age(text: str) -> float:
    from cdc_bridge.ops.prune import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _batch_size(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc-bridge",
        description="Relay committed outbox inserts from PostgreSQL's WAL to NATS JetStream.",
    )
    parser.add_argument("--version", action="version", version=f"cdc-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def logging_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--log-format",
            choices=["json", "console"],
            help="log rendering (default: the config's logging.format, json)",
        )
        sub.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            help="default: the config's logging.level, info",
        )

    run = commands.add_parser(
        "run",
        help="run the bridge (the daemon)",
        description="Stream committed outbox inserts to JetStream until SIGTERM/SIGINT.",
        epilog="example: cdc-bridge run --config /etc/cdc-bridge/config.yaml",
    )
    run.add_argument("--config", required=True, help="YAML config file")
    logging_flags(run)
    run.set_defaults(handler=cmd_run)

    dev = commands.add_parser(
        "dev",
        help="run the bridge on a throwaway local PostgreSQL + NATS",
        description="Start PostgreSQL (logical WAL, outbox schema) and a JetStream "
        "nats-server under --dir, then run the bridge against them. Ctrl-C stops all.",
        epilog="example: cdc-bridge dev --demo",
    )
    dev.add_argument("--config", default="config/dev.yaml", help="default: config/dev.yaml")
    dev.add_argument("--dir", default=".devstack", help="where the servers keep their data")
    dev.add_argument(
        "--demo",
        action="store_true",
        help="also run a producer writing ticket events, and print what arrives",
    )
    logging_flags(dev)
    dev.set_defaults(handler=cmd_dev)

    routes = commands.add_parser("routes", help="check the routing rules")
    routes_commands = routes.add_subparsers(dest="routes_command", required=True, metavar="COMMAND")
    routes_test = routes_commands.add_parser(
        "test",
        help="show what the bridge would publish for one row",
        description="Route one row as the bridge would: print the route, subject, headers "
        "and payload, or the dead-letter reason. Touches neither PostgreSQL nor NATS. "
        "Exit 0 routed, 1 dead-lettered or poison, 2 bad input.",
        epilog="example: cdc-bridge routes test --config config/example.yaml --row "
        '\'{"id": "7", "aggregate_type": "ticket", "aggregate_id": "T-1", '
        '"event_type": "created", "payload": {"n": 1}}\'',
    )
    routes_test.add_argument("--config", required=True, help="YAML config file")
    routes_test.add_argument(
        "--row", required=True, help="the row as a JSON object of column: value"
    )
    routes_test.add_argument(
        "--table", help="schema.table the row is inserted into (default: the first outbox.table)"
    )
    routes_test.add_argument(
        "--max-payload",
        type=int,
        default=1024 * 1024,
        help="the NATS server's max_payload in bytes (default: 1048576, nats-server's default)",
    )
    routes_test.add_argument("--json", action="store_true", help="print one JSON object")
    routes_test.set_defaults(handler=cmd_routes_test)

    # The operator's commands live in cdc_bridge/ops/ (one module per group); their
    # parser sections import nothing heavy, so --help stays fast.
    from cdc_bridge.ops import cli_args as ops_args

    ops_args.add_slots_command(commands)
    ops_args.add_check_command(commands)
    ops_args.add_init_command(commands)
    ops_args.add_status_command(commands)

    outbox = commands.add_parser("outbox", help="housekeeping of the outbox tables")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    prune = outbox_commands.add_parser(
        "prune",
        help="delete outbox rows older than an age, in batches",
        description="Delete rows of the config's outbox tables whose created_at is older\n"
        "than --older-than, --batch-size rows per transaction, and print how many.\n"
        "Safe while the bridge runs: it reads events from the WAL, and deletes are\n"
        "not events.\n\nExit codes: 0 ok, 1 failed, 2 usage error.",
        epilog="examples:\n  cdc-bridge outbox prune --config config.yaml --older-than 7d "
        "--dry-run\n  cdc-bridge outbox prune --config config.yaml --older-than 36h "
        "--batch-size 5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prune.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    prune.add_argument("--dsn", metavar="DSN", help="override the config's postgres.dsn")
    prune.add_argument(
        "--older-than", required=True, type=_age, metavar="AGE", help="e.g. 7d, 12h, 1d12h"
    )
    prune.add_argument(
        "--batch-size",
        type=_batch_size,
        default=10_000,
        metavar="N",
        help="rows deleted per transaction (default 10000)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would go")
    prune.set_defaults(handler=cmd_outbox_prune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
