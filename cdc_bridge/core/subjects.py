"""NATS subject matching (pure): does a stream's subject filter capture a subject?

Subjects are dot-separated tokens. In a filter, ``*`` stands for exactly one token
and ``>`` (only as the last token) for one or more further tokens; every other token
must be equal. ``events.>`` captures ``events.a`` and ``events.a.b`` but not
``events`` itself.
"""

from __future__ import annotations

_ONE_TOKEN = "*"
_REST = ">"


def subject_matches(pattern: str, subject: str) -> bool:
    """True when ``pattern`` (which may hold wildcards) captures ``subject``."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == _REST and index == len(pattern_tokens) - 1:
            return len(subject_tokens) > index  # at least one token left for '>'
        if index >= len(subject_tokens):
            return False
        if token != _ONE_TOKEN and token != subject_tokens[index]:
            return False
    return len(pattern_tokens) == len(subject_tokens)
