import math

import pytest

from cdc_bridge.core.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        (" 10s ", 10.0),
        ("0", 0.0),
        ("7", 7.0),
        ("0.25", 0.25),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_parses_durations(text: object, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds)


@pytest.mark.parametrize(
    "value",
    [
        "fast",
        "",
        "s",
        "10 s",
        "10x",
        "-1s",
        "1s-",
        "ms10",
        "1m 30s",
        -1,
        math.inf,
        math.nan,
        True,
        None,
        [1],
        {"s": 1},
    ],
)
def test_rejects_non_durations(value: object) -> None:
    with pytest.raises(DurationError, match="expected a duration like 500ms, 10s or 2m, got"):
        parse_duration(value)


def test_error_message_quotes_the_text() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("fast")
    assert str(caught.value) == "expected a duration like 500ms, 10s or 2m, got 'fast'"


def test_duration_error_is_a_value_error() -> None:
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (10, "10s"), (120, "2m"), (3600, "1h"), (90, "90s"), (0, "0s")],
)
def test_formats_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
