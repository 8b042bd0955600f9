"""``cdc-bridge status``: ask a running bridge's HTTP endpoint what it is doing.

The bridge serves its state as JSON at ``http://<http.listen>/status``; this is a
plain urllib client of it. ``--json`` prints the bridge's object unchanged, so its
keys are the bridge's (role, slot, confirmed_lsn, lag_bytes, in_flight,
events_published, dead_lettered, last_error, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

from cdc_bridge.cli.args import command_parser, json_flag
from cdc_bridge.cli.errors import EXIT_OK, OpsError, UsageError, run_command
from cdc_bridge.cli.render import dumps, human_bytes, key_values
from cdc_bridge.config.load import load_config

if TYPE_CHECKING:
    from cdc_bridge.cli.args import Subcommands
from cdc_bridge.cli.render import duration_text, time_text

STATUS_PATH = "/status"
# Shown first, in this order, with friendlier names; anything else follows as is.
_KNOWN = (
    ("role", "role"),
    ("slot", "slot"),
    ("stream", "stream"),
    ("confirmed_lsn", "confirmed LSN"),
    ("lag_bytes", "lag"),
    ("retained_bytes", "retained WAL"),
    ("in_flight", "in flight"),
    ("events_published", "events published"),
    ("dead_lettered", "dead-lettered"),
    ("skipped", "replays skipped"),
    ("transactions", "transactions"),
    ("last_error", "last error"),
    ("last_error_at", "last error at"),
    ("uptime_seconds", "uptime"),
)
_SIZES = {"lag_bytes", "retained_bytes"}
_TIMES = {"last_error_at"}  # Unix times in /status
# Straight to the bridge: an http_proxy in the environment must not reroute the request.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status_url(listen: str) -> str:
    """``http.listen`` -> the URL to ask. A wildcard address means "this machine"; port 0
    (a free port, chosen at start) is not in the config: the bridge logs it."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise UsageError(f"http.listen {listen!r} is not host:port; pass --url")
    if int(port) == 0:
        raise UsageError(
            f"http.listen {listen!r} lets the bridge pick a free port, which the config "
            "cannot tell: pass --url with the address of the bridge's http_listening log "
            "line, e.g. --url http://127.0.0.1:PORT"
        )
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{STATUS_PATH}"


def url_from_argument(url: str) -> str:
    """--url as given -> the URL to ask: a base URL (``http://host:port``, or ``host:port``)
    gets ``/status``; a URL with a path is asked as it is."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path=STATUS_PATH)
    return urllib.parse.urlunsplit(parts)


def fetch_status(url: str, timeout: float) -> dict[str, object]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise OpsError(
            f"{url} answered HTTP {exc.code}: is that the bridge's http.listen address?"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) else exc.reason
        raise OpsError(
            f"cannot reach the bridge at {url}: {reason or exc.reason} (is it running, "
            "with http.listen set?)"
        ) from None
    except TimeoutError:
        raise OpsError(f"the bridge at {url} did not answer within {timeout:g}s") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise OpsError(f"{url} did not answer with JSON: is it the bridge?") from None
    if not isinstance(document, dict):
        raise OpsError(f"{url} answered with JSON that is not an object: is it the bridge?")
    return document


def status_lines(document: dict[str, object], now: float | None = None) -> list[str]:
    """The /status object for people: friendly names, sizes and times, and no line for
    what the bridge does not know (null), except "last error none"."""
    now = time.time() if now is None else now
    known = {key for key, _ in _KNOWN}
    labelled = [(key, label) for key, label in _KNOWN if key in document]
    labelled += [(key, key.replace("_", " ")) for key in document if key not in known]
    pairs: list[tuple[str, object]] = []
    for key, label in labelled:
        value = document[key]
        if value is None and key != "last_error":
            continue
        pairs.append((label, _shown(key, value, now)))
    return key_values(pairs)


def _shown(key: str, value: object, now: float) -> object:
    if key in _SIZES and isinstance(value, int):
        return f"{human_bytes(value)} ({value} bytes)"
    if key in _TIMES and isinstance(value, int | float):
        return time_text(value, now)
    if key == "uptime_seconds" and isinstance(value, int | float):
        return duration_text(value)
    if key == "last_error" and value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(k, v, now)}" for k, v in value.items() if v is not None)
    return value


async def status_command(url: str, *, timeout: float, as_json: bool) -> int:
    document = await asyncio.to_thread(fetch_status, url, timeout)
    print(dumps(document) if as_json else "\n".join(status_lines(document)))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:

    async def main() -> int:
        url = None if args.url is None else url_from_argument(args.url)
        if url is None:  # argparse requires --config or --url
            listen = load_config(args.config).http.listen
            if listen is None:
                raise UsageError(f"{args.config} sets no http.listen: the bridge serves no status")
            url = status_url(listen)
        return await status_command(url, timeout=args.timeout, as_json=args.json)

    return run_command(main)


def register(commands: Subcommands, name: str, summary: str) -> None:
    status = command_parser(
        commands,
        name,
        summary,
        "GET the running bridge's /status (from the config's http.listen, or --url): "
        "streaming or standby, confirmed LSN, lag, in flight, events published, last "
        "error.\n--json: the bridge's /status object, unchanged.",
        "  cdc-bridge status --config config.yaml\n"
        "  cdc-bridge status --url http://10.0.0.7:8080 --json",
    )
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--config", metavar="FILE", help="the bridge's YAML config file (its http.listen)"
    )
    where.add_argument(
        "--url",
        help="the bridge's address, e.g. http://10.0.0.7:8080 (/status is added when the "
        "URL has no path)",
    )
    status.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)"
    )
    json_flag(status)
    status.set_defaults(handler=_status)
