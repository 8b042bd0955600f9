"""``{column}`` templates, and the checks that make rendered subjects safe.

Shared by the config loader (validation at start-up) and the router (rendering per
row). A subject template's literal text must leave exactly one whole token per
placeholder; the router checks each substituted value is exactly one token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TABLE_PSEUDO_COLUMN = "table"  # in `when` and templates: the row's "schema.table"
# A change event's action (I, U, D), which templates and `when` read like a column.
ACTION_PSEUDO_COLUMN = "action"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A placeholder or `when` key: a column, or a path into a json/jsonb column's value,
# ``payload.customer.region`` (the column, then object keys).
_PLACEHOLDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*")
_TEMPLATE_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SUBJECT_FORBIDDEN = re.compile(r"[*>\s\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed ``{column}`` template.

    ``literals`` has one more item than ``columns``; the rendered text is
    ``literals[0] + value(columns[0]) + literals[1] + ... + literals[-1]``.
    ``{{`` and ``}}`` stand for literal braces.
    """

    literals: tuple[str, ...]
    columns: tuple[str, ...]  # placeholders: a column, or a path like payload.customer.region


def split_path(placeholder: str) -> tuple[str, tuple[str, ...]]:
    """``payload.customer.region`` -> (``payload``, (``customer``, ``region``)); a plain
    column has no keys."""
    column, *keys = placeholder.split(".")
    return column, tuple(keys)


def check_placeholder(text: str) -> str:
    """A column or a JSON path into one; ValueError names what is wrong."""
    if not _PLACEHOLDER.fullmatch(text):
        raise ValueError(
            f"expected a column name, or a path into a json/jsonb column like "
            f"payload.customer.region (keys of letters, digits, '_' and '-'), got {text!r}"
        )
    column, keys = split_path(text)
    if keys and column in (TABLE_PSEUDO_COLUMN, ACTION_PSEUDO_COLUMN):
        raise ValueError(
            f"{text!r} reads inside `{column}`, which is not a JSON column; a path starts "
            "with a json or jsonb column, like payload.customer.region"
        )
    return text


def parse_template(text: str) -> Template:
    """Split a template into literal text and column names; ValueError if malformed."""
    literals: list[str] = []
    columns: list[str] = []
    current: list[str] = []
    position = 0
    for piece in _TEMPLATE_PIECE.finditer(text):
        current.append(text[position : piece.start()])
        position = piece.end()
        token = piece.group(0)
        if token in ("{{", "}}"):
            current.append(token[0])
        elif piece.group(1) is None:
            raise ValueError(f"unmatched {token!r}: write {token * 2} for a literal brace")
        elif not _IDENTIFIER.fullmatch(piece.group(1)):
            if not _PLACEHOLDER.fullmatch(piece.group(1)):
                raise ValueError(
                    f"placeholder {token!r} must name a column, like {{event_type}}, or a "
                    "path into a json/jsonb column, like {payload.customer.region}"
                )
            check_placeholder(piece.group(1))
            literals.append("".join(current))
            current = []
            columns.append(piece.group(1))
        else:
            literals.append("".join(current))
            current = []
            columns.append(piece.group(1))
    current.append(text[position:])
    literals.append("".join(current))
    return Template(tuple(literals), tuple(columns))


def check_subject_template(text: str) -> Template:
    """A template whose every rendering (one safe token per placeholder) is a concrete
    NATS subject. ValueError says what is wrong."""
    template = parse_template(text)
    if TABLE_PSEUDO_COLUMN in template.columns:
        raise ValueError("{table} always contains a '.', so it cannot fill one subject token")
    # Placeholder values are single tokens (checked per row), so the literal text
    # alone decides the token structure; "x" stands in for any value.
    check_concrete_subject("x".join(template.literals), shown=text)
    return template


def check_concrete_subject(subject: str, shown: str | None = None) -> None:
    if not subject:
        raise ValueError("a subject must not be empty")
    forbidden = _SUBJECT_FORBIDDEN.search(subject)
    if forbidden is not None:
        char = forbidden.group(0)
        if char in "*>":
            raise ValueError(
                f"published subjects are concrete: the wildcard {char!r} is not allowed"
            )
        raise ValueError(f"a subject may not contain whitespace or control characters ({char!r})")
    if "" in subject.split("."):
        shown = subject if shown is None else shown
        raise ValueError(f"{shown!r} has an empty token (a dot at an end or two in a row)")


def check_subject_filter(subject: str) -> str:
    """Stream subjects may use wildcards: ``*`` as a whole token, ``>`` as the last one."""
    tokens = subject.split(".")
    if not subject or "" in tokens:
        raise ValueError(f"{subject!r} has an empty token (a dot at an end or two in a row)")
    for index, token in enumerate(tokens):
        if re.search(r"[\s\x00-\x1f\x7f]", token):
            raise ValueError("a subject may not contain whitespace or control characters")
        if token == ">" and index != len(tokens) - 1:
            raise ValueError(f"'>' must be the last token in {subject!r}")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise ValueError(f"wildcards must be whole tokens in {subject!r}")
    return subject
