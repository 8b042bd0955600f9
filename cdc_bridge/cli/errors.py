"""Turning failures into one readable line and an exit code.

Exit codes: 0 ok, 1 a check failed or the command refused or failed, 2 usage (bad
arguments or an unusable config file). No traceback reaches the operator, and no
password: every message that might echo a DSN or URL goes through ``redact_dsn``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import psycopg

from cdc_bridge.bridge.logs import configure_logging
from cdc_bridge.config.problems import ConfigError
from cdc_bridge.core.redaction import redact_dsn

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class OpsError(Exception):
    """The command refused or could not do its job: print the message, exit 1."""


class UsageError(Exception):
    """The arguments cannot work together: print the message, exit 2."""


def describe_error(exc: BaseException) -> str:
    """One line about a PostgreSQL, NATS or network failure."""
    if isinstance(exc, psycopg.Error):
        return "PostgreSQL: " + describe_postgres_error(exc)
    if isinstance(exc, nats.errors.NoServersError):
        return "NATS: cannot connect to any server"
    if isinstance(exc, nats.errors.Error | TimeoutError):
        return f"NATS: {first_line(exc) or type(exc).__name__}"
    return first_line(exc) or type(exc).__name__


def describe_postgres_error(exc: psycopg.Error) -> str:
    # The primary message plus the server's hint: hints often name the fix
    # (e.g. output_plugin_libraries), and fit on the same line.
    primary = exc.diag.message_primary or first_line(exc) or type(exc).__name__
    hint = exc.diag.message_hint
    return redact_dsn(f"{primary} (hint: {hint})" if hint else primary)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact_dsn(text.splitlines()[0]) if text else ""


def print_error(message: str) -> None:
    print(f"cdc-bridge: {message}", file=sys.stderr)


def run_command(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run one async command; map every expected failure to its line and exit code."""
    # The commands print what they have to say; the log lines of the daemon's modules
    # they reuse (e.g. "stream_created") would only repeat it, on stderr at that.
    configure_logging("console", "warning")
    try:
        return asyncio.run(main())
    except UsageError as exc:
        print_error(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        print_error(f"invalid configuration:\n{exc}")
        return EXIT_USAGE
    except OpsError as exc:
        print_error(str(exc))
        return EXIT_FAILED
    except (psycopg.Error, nats.errors.Error, OSError, TimeoutError) as exc:
        print_error(describe_error(exc))
        return EXIT_FAILED
