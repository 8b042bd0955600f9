"""structlog set-up: JSON lines by default, console rendering for humans."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from cdc_bridge.core.redaction import redact


def redacting(redactor: Callable[[str], str]) -> structlog.typing.Processor:
    """A processor that passes every text value of a log line through ``redactor``:
    the one boundary every log line crosses, whatever module or driver error it quotes."""

    def processor(
        logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redactor(value)
            elif isinstance(value, list | tuple):
                event[key] = [redactor(v) if isinstance(v, str) else v for v in value]
        return event

    return processor


def configure_logging(
    fmt: str = "json", level: str = "info", redactor: Callable[[str], str] = redact
) -> None:
    """``redactor``: the config's (``BridgeConfig.redactor()``) once it is loaded, so the
    secrets it holds are masked even where they appear bare."""
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redacting(redactor),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Third-party libraries (nats-py) log through the standard library: keep their
    # noise out unless asked for, and never let them print tracebacks of expected errors.
    logging.basicConfig(level=logging.CRITICAL if numeric_level > logging.DEBUG else logging.DEBUG)
