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


def filter_within(inner: str, outer: str) -> bool:
    """True when every subject ``inner`` (a filter) captures, ``outer`` captures too."""
    inner_tokens = inner.split(".")
    outer_tokens = outer.split(".")
    for index, token in enumerate(outer_tokens):
        if token == _REST and index == len(outer_tokens) - 1:
            return len(inner_tokens) > index
        if index >= len(inner_tokens):
            return False
        mine = inner_tokens[index]
        if mine == _REST:
            return False  # inner reaches deeper than a one-token position of outer
        if token != _ONE_TOKEN and token != mine:
            return False
    return len(inner_tokens) == len(outer_tokens)


def common_space(filters: list[str]) -> str | None:
    """The narrowest ``prefix.>`` (or the one subject) that captures every filter, built
    from their shared literal leading tokens; None when they share none."""
    if not filters:
        return None
    if len(set(filters)) == 1 and _ONE_TOKEN not in filters[0] and _REST not in filters[0]:
        return filters[0]
    token_lists = [f.split(".") for f in filters]
    prefix: list[str] = []
    for tokens in zip(*token_lists, strict=False):
        first = tokens[0]
        if first in (_ONE_TOKEN, _REST) or any(t != first for t in tokens):
            break
        prefix.append(first)
    # `a.>` does not capture `a` itself: the prefix must leave every filter a token.
    while prefix and any(len(t) <= len(prefix) for t in token_lists):
        prefix.pop()
    return ".".join(prefix) + ".>" if prefix else None


def filters_overlap(first: str, second: str) -> bool:
    """True when some subject is captured by both filters: ``events.*`` and
    ``events.ticket`` overlap, ``events.>`` and ``orders.>`` do not."""
    first_tokens = first.split(".")
    second_tokens = second.split(".")
    for index in range(max(len(first_tokens), len(second_tokens))):
        mine = first_tokens[index] if index < len(first_tokens) else None
        theirs = second_tokens[index] if index < len(second_tokens) else None
        if mine == _REST or theirs == _REST:
            return mine is not None and theirs is not None  # '>' needs a token to match
        if mine is None or theirs is None:
            return False
        if _ONE_TOKEN not in (mine, theirs) and mine != theirs:
            return False
    return True
