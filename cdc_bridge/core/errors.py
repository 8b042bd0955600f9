"""The fatal-error base: what every layer raises when retrying cannot help."""

from __future__ import annotations


class FatalError(Exception):
    """Retrying cannot help: say it in one line and exit non-zero."""
