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
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            redacting(redactor),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(numeric_level, timestamper, redactor, renderer)


def _route_stdlib_logging(
    level: int,
    timestamper: structlog.typing.Processor,
    redactor: Callable[[str], str],
    renderer: structlog.typing.Processor,
) -> None:
    """Third-party libraries (asyncio, nats-py) log through the standard library: their
    lines get the same processors and renderer as ours (JSON or console, redacted, with
    ``logger`` naming the library). Below debug level they are kept out, so expected
    errors never print a library's traceback."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # a traceback is text to redact too
                redacting(redactor),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]  # replaces the last call's: configure_logging may run again
    root.setLevel(logging.CRITICAL if level > logging.DEBUG else logging.DEBUG)
