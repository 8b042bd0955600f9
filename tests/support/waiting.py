"""Wait for a condition with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value (so a
    predicate returning ``X | None`` gives an ``X``).

    Raises AssertionError(``message``) if it is still falsy after ``timeout`` seconds. The
    predicate is always tried once more at the deadline, so a slow machine that got there
    just in time does not fail.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if last_try:
            raise AssertionError(f"{message} (waited {timeout:g}s, last value {value!r})")
        time.sleep(interval)


@overload
async def wait_until_async(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """The async twin of ``wait_until``: ``predicate`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() >= deadline
        outcome = predicate()
        value = await outcome if inspect.isawaitable(outcome) else outcome
        if value:
            return value
        if last_try:
            raise AssertionError(f"{message} (waited {timeout:g}s, last value {value!r})")
        await asyncio.sleep(interval)
