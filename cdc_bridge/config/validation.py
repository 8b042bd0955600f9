"""Pydantic's validation errors -> one plain line each, naming the key path.

Values are echoed only in a short, password-free form, and not at all under keys
named like a secret.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, TypeGuard

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.config.problems import KeyPath, Problems
from cdc_bridge.core.redaction import SENSITIVE_KEY, shown_value


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "text"
    return (
        shown_value(value) if value is None or isinstance(value, dict | list | tuple) else "a value"
    )


_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
}


def _allowed_keys(loc: KeyPath) -> list[str]:
    """The keys the schema accepts at ``loc`` (a mapping's path), for suggestions."""
    annotation: object = BridgeConfig
    for part in loc:
        annotation = _strip(annotation)
        if _is_section(annotation) and isinstance(part, str):
            info = _fields_by_key(annotation).get(part)
            annotation = info.annotation if info is not None else None
        elif typing.get_origin(annotation) in (tuple, list) and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        else:
            return []
    annotation = _strip(annotation)
    return list(_fields_by_key(annotation)) if _is_section(annotation) else []


def _fields_by_key(section: type[BaseModel]) -> dict[str, FieldInfo]:
    """A section's fields by their keys in the file (``outbox.table`` is ``tables``)."""
    return {info.alias or name: info for name, info in section.model_fields.items()}


def _strip(annotation: object) -> object:
    """``Annotated[X | None, ...]`` -> ``X``."""
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation


def _is_section(annotation: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _message(error: ErrorDetails, loc: KeyPath) -> str:
    kind = error["type"]
    sensitive = any(isinstance(p, str) and SENSITIVE_KEY.search(p) for p in loc)
    value = "<redacted>" if sensitive else shown_value(error.get("input"))
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        unknown = str(loc[-1])
        close = difflib.get_close_matches(unknown, _allowed_keys(loc[:-1]), n=1, cutoff=0.6)
        return f"unknown key {unknown!r}" + (f"; did you mean {close[0]!r}?" if close else "")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        # The value may be a whole DSN written where a section belongs: name its kind only.
        return f"expected {_EXPECTED[kind]}, got {_kind(error.get('input'))}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the listed values')}, got {value}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "more than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }[kind]
        limit = next(iter(ctx.values()), "?")
        return f"must be {words} {limit}, got {value}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        text = str(ctx["error"])
        # Validators quote the value they reject; keep that out of secret keys.
        return "<redacted>: invalid value" if sensitive else text
    return f"{error['msg']} (got {value})"


def add_validation_problems(
    exc: ValidationError, data: object, problems: Problems, failed: set[KeyPath]
) -> None:
    errors = exc.errors()
    for error in errors:
        if error["type"] == "too_short" and _has_nested_error(error["loc"], errors):
            # pydantic counts only the valid items: a list whose one item is broken
            # would also be "empty". The item's own problem is the one to report.
            continue
        loc = _display_loc(tuple(p for p in error["loc"] if p != "[key]"), data)
        if any(loc[: len(f)] == f for f in failed):
            continue  # already reported: an unset environment variable
        problems.add(loc, _message(error, loc))


def _has_nested_error(loc: tuple[str | int, ...], errors: list[ErrorDetails]) -> bool:
    return any(len(e["loc"]) > len(loc) and e["loc"][: len(loc)] == loc for e in errors)


def _display_loc(loc: KeyPath, data: object) -> KeyPath:
    """Drop list indexes pydantic added where the YAML held a single value
    (``outbox.table: x`` is validated as a one-item list)."""
    shown: list[str | int] = []
    current = data
    for part in loc:
        if isinstance(part, int) and not isinstance(current, list):
            continue
        shown.append(part)
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
        else:
            current = None
    return tuple(shown)
