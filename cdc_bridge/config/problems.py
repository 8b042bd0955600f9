"""Problems found in a config file, each tied to a key path and its line.

Every problem becomes one line, ``config.yaml:12: routes[1].subject: <message>``, and
all of them are raised together as one ConfigError so a broken file is fixed in one round.
"""

from __future__ import annotations

from typing import TypeAlias


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


KeyPath: TypeAlias = tuple[str | int, ...]


class Problems:
    """Problems collected along the pipeline, each tied to a key path where possible."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.entries: list[tuple[int | None, str]] = []

    def add(self, path: KeyPath, message: str, line: int | None = None) -> None:
        if line is None:
            line = self.line_of(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        text = f"{where}: {format_key_path(path)}: {message}" if path else f"{where}: {message}"
        self.entries.append((line, text))

    def line_of(self, path: KeyPath) -> int | None:
        # A missing key has no line of its own: point at its nearest present parent.
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def raise_if_any(self) -> None:
        if self.entries:
            ordered = sorted(self.entries, key=lambda entry: entry[0] or 0)
            raise ConfigError([text for _, text in ordered])


def format_key_path(path: KeyPath) -> str:
    """``("routes", 1, "subject")`` -> ``routes[1].subject``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
