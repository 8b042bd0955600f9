"""How large a config file may be: beyond these it is refused in one line.

A YAML alias is expanded once per reference, so a file of a few hundred bytes can
describe billions of values (the "billion laughs"); and a file of hundreds of thousands
of routes takes minutes and gigabytes to load. Neither is a bridge's config, so loading
stops at the first limit reached instead of using up the machine. Each limit is far
above what a real config needs: a route is about a dozen values, a config a few levels
deep. (Issue 27, items 14 and 15; README's configuration reference states them.)
"""

from __future__ import annotations

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_VALUES = 250_000  # values built, an alias's at each reference: 25 a route at MAX_ROUTES
MAX_DEPTH = 64  # levels of nested mappings and lists
MAX_ROUTES = 10_000


class LimitExceeded(Exception):
    """Raised where loading stops; ``message`` is the problem's one line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def file_size_problem(size: int) -> str | None:
    if size <= MAX_FILE_BYTES:
        return None
    limit = MAX_FILE_BYTES // (1024 * 1024)
    return f"the file is over the {limit} MiB limit for a config file: is it the right file?"


def too_many_values() -> LimitExceeded:
    return LimitExceeded(
        f"the file expands to more than {MAX_VALUES:,} values, the limit for a config "
        "file (each YAML alias counts its anchor's values again): use fewer aliases, "
        "or fewer routes"
    )


def too_deep(line: int) -> LimitExceeded:
    return LimitExceeded(
        f"values nested more than {MAX_DEPTH} levels deep, the limit for a config file "
        "(counting what YAML aliases expand to): flatten the structure",
        line,
    )


def routes_problem(count: int) -> str | None:
    if count <= MAX_ROUTES:
        return None
    return (
        f"{count:,} routes, over the limit of {MAX_ROUTES:,}: route on a placeholder "
        "(subject: events.{aggregate_type}) rather than one route per value, or split "
        "the tables among several bridges"
    )
