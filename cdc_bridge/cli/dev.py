"""``cdc-bridge dev``: the bridge on a throwaway local PostgreSQL and nats-server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cdc_bridge.cli.args import logging_flags, print_error

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands
    from cdc_bridge.config.model import BridgeConfig


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Shipped in the package (a pip install has no config/ folder); config/dev.yaml is its copy
# in the repository, beside the other example configs.
DEV_CONFIG = "dev.yaml"
# Stand-ins for what the stack provides, to check the config before starting anything
_CHECK_ENV = {
    "CDC_BRIDGE_DEV_DSN": "postgresql://cdc_bridge@127.0.0.1:5432/app",
    "CDC_BRIDGE_DEV_NATS_URL": "nats://127.0.0.1:4222",
}


def dev_config_text() -> str:
    from importlib import resources

    return resources.files("cdc_bridge.dev").joinpath(DEV_CONFIG).read_text(encoding="utf-8")


def _load(path: str | None, env: dict[str, str]) -> BridgeConfig:
    from cdc_bridge.config.load import load_config, parse_config

    if path is None:
        return parse_config(dev_config_text(), source=f"cdc_bridge/dev/{DEV_CONFIG}", env=env)
    return load_config(path, env=env)


def dev_command(args: argparse.Namespace) -> int:
    from cdc_bridge.bridge.logs import configure_logging
    from cdc_bridge.bridge.supervisor import install_signal_handlers, run_bridge
    from cdc_bridge.config.problems import ConfigError
    from cdc_bridge.dev.demo import print_events, produce_tickets
    from cdc_bridge.dev.devstack import DevStack, dev_schema_sql
    from cdc_bridge.dev.processes import DevstackError, free_port
    from cdc_bridge.source.setup import prepare_postgres

    configure_logging(args.log_format or "console", args.log_level or "info")
    try:  # before anything starts: a config that cannot work leaves nothing behind
        _load(args.config, {**os.environ, **_CHECK_ENV})
    except ConfigError as exc:
        return print_error(f"invalid configuration (nothing was started):\n{exc}")
    # Fresh every time: a resumed stack would add this run's demo tickets (T-00001, ...)
    # to the stream beside the last run's, under the same ids.
    stack = DevStack(Path(args.dir), fresh=True)
    try:
        print(
            f"starting a fresh PostgreSQL and nats-server under {args.dir} "
            "(what an earlier run left there is wiped) ..."
        )
        stack.start()
    except DevstackError as exc:
        return print_error(str(exc))
    try:
        import psycopg

        with psycopg.connect(stack.postgres.dsn(), autocommit=True) as conn:
            conn.execute(dev_schema_sql())  # the outbox and the README's tickets table
        # The HTTP endpoint on 8080 when that is free, else on any free port: a busy
        # 8080 on a laptop must not stop the demo.
        http_listen = f"127.0.0.1:{8080 if _port_is_free(8080) else free_port()}"
        env = {**os.environ, **stack.environment(), "CDC_BRIDGE_DEV_HTTP": http_listen}
        try:
            config = _load(args.config, env)
        except ConfigError as exc:
            return print_error(f"invalid configuration:\n{exc}")
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


def register(commands: Subcommands, name: str, summary: str) -> None:
    dev = commands.add_parser(
        name,
        help=summary,
        description="Start PostgreSQL (logical WAL, outbox schema) and a JetStream "
        "nats-server under --dir, then run the bridge against them. Ctrl-C stops all.",
        epilog="example: cdc-bridge dev --demo",
    )
    dev.add_argument(
        "--config",
        metavar="FILE",
        help="default: the dev config shipped with cdc-bridge (config/dev.yaml in the repository)",
    )
    dev.add_argument("--dir", default=".devstack", help="where the servers keep their data")
    dev.add_argument(
        "--demo",
        action="store_true",
        help="also run a producer writing ticket events, and print what arrives",
    )
    logging_flags(dev)
    dev.set_defaults(handler=dev_command)
