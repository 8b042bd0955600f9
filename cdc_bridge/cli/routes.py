"""``cdc-bridge routes test``: what the bridge would publish for one row (no servers)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands


def routes_test_command(args: argparse.Namespace) -> int:
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



def register(commands: Subcommands, name: str, summary: str) -> None:
    routes = commands.add_parser(name, help=summary)
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
    routes_test.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
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
    routes_test.set_defaults(handler=routes_test_command)
