"""``cdc-bridge run``: the daemon, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
from typing import TYPE_CHECKING

from cdc_bridge.cli.args import logging_flags, print_error

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands


def run_command(args: argparse.Namespace) -> int:
    from cdc_bridge.bridge.logs import configure_logging
    from cdc_bridge.bridge.supervisor import install_signal_handlers, run_bridge
    from cdc_bridge.config.load import load_config
    from cdc_bridge.config.problems import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return print_error(f"invalid configuration:\n{exc}")
    except OSError as exc:
        return print_error(f"cannot read {args.config}: {exc.strerror}")
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



def register(commands: Subcommands, name: str, summary: str) -> None:
    run = commands.add_parser(
        name,
        help=summary,
        description="Stream committed outbox inserts to JetStream until SIGTERM/SIGINT.",
        epilog="example: cdc-bridge run --config /etc/cdc-bridge/config.yaml",
    )
    run.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    logging_flags(run)
    run.set_defaults(handler=run_command)

