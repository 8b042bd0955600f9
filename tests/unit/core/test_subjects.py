import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_bridge.core.subjects import common_space, filter_within, filters_overlap, subject_matches


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("events.ticket.created", "events.ticket.created", True),
        ("events.ticket.created", "events.ticket.updated", False),
        ("events.*.created", "events.ticket.created", True),
        ("events.*", "events.ticket.created", False),
        ("events.*.*", "events.ticket", False),
        ("events.>", "events.ticket", True),
        ("events.>", "events.ticket.created.v2", True),
        ("events.>", "events", False),  # '>' needs at least one token
        (">", "events", True),
        (">", "events.a.b", True),
        ("*", "events", True),
        ("*", "events.a", False),
        ("*.>", "events.a", True),
        ("*.>", "events", False),
        ("events", "events.a", False),
        ("events.a", "events", False),
        ("other.>", "events.a", False),
        ("events.dlq", "events.dlq", True),
        ("ev*", "events", False),  # wildcards are whole tokens only
        ("events.a>", "events.a>", True),  # ... else they are plain characters
    ],
)
def test_examples(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


# Small alphabets so that random patterns and subjects often share tokens.
TOKENS = st.sampled_from(["a", "b", "events", "x"])
SUBJECTS = st.lists(TOKENS, min_size=1, max_size=5)
PATTERN_TOKENS = st.sampled_from(["a", "b", "events", "x", "*"])


def reference(pattern_tokens: list[str], subject: str) -> bool:
    """The same rule as a regular expression, written independently."""
    parts = []
    for index, token in enumerate(pattern_tokens):
        last = index == len(pattern_tokens) - 1
        if token == ">" and last:
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif token == "*":
            parts.append(r"[^.]+")
        else:
            parts.append(re.escape(token))
    return re.fullmatch(r"\.".join(parts), subject) is not None


@given(
    st.lists(PATTERN_TOKENS, min_size=1, max_size=5),
    st.booleans(),
    SUBJECTS,
)
def test_agrees_with_a_regex_reference(
    pattern_tokens: list[str], ends_with_rest: bool, subject_tokens: list[str]
) -> None:
    if ends_with_rest:
        pattern_tokens = [*pattern_tokens[:-1], ">"]
    subject = ".".join(subject_tokens)
    pattern = ".".join(pattern_tokens)
    assert subject_matches(pattern, subject) is reference(pattern_tokens, subject)


@given(SUBJECTS, st.data())
def test_a_subject_matches_itself_and_its_generalisations(
    subject_tokens: list[str], data: st.DataObject
) -> None:
    subject = ".".join(subject_tokens)
    assert subject_matches(subject, subject)
    # Any token replaced by '*' still matches.
    index = data.draw(st.integers(0, len(subject_tokens) - 1))
    starred = [*subject_tokens[:index], "*", *subject_tokens[index + 1 :]]
    assert subject_matches(".".join(starred), subject)
    # A prefix followed by '>' matches exactly when '>' is left at least one token.
    cut = data.draw(st.integers(0, len(subject_tokens)))
    rest = ".".join([*subject_tokens[:cut], ">"])
    assert subject_matches(rest, subject) is (cut < len(subject_tokens))


@given(SUBJECTS, SUBJECTS)
def test_literal_patterns_match_only_the_same_subject(
    pattern_tokens: list[str], subject_tokens: list[str]
) -> None:
    pattern, subject = ".".join(pattern_tokens), ".".join(subject_tokens)
    assert subject_matches(pattern, subject) is (pattern == subject)


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        ("events.orders.*", "events.orders.>", True),
        ("events.orders.>", "events.orders.>", True),
        ("events.orders", "events.orders.>", False),
        ("events.*.x", "events.orders.>", False),
        ("events.orders.x", "events.*.x", True),
        ("events.orders.>", "events.orders.*", False),
        ("events.a.b", "events.a.b", True),
        ("events.a.b.c", "events.a.*", False),
    ],
)
def test_filter_within(inner: str, outer: str, expected: bool) -> None:
    assert filter_within(inner, outer) is expected


def test_common_space() -> None:
    assert common_space(["a.b.*", "a.b.c.d"]) == "a.b.>"
    assert common_space(["a.b", "a.b"]) == "a.b"
    assert common_space(["a.b", "a.c"]) == "a.>"
    assert common_space(["a.*", "b.*"]) is None
    assert common_space([]) is None


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("events.*", "events.ticket", True),
        ("events.>", "events.ticket.created", True),
        ("events.>", "orders.>", False),
        ("events.*.*", "events.ticket", False),
        ("events.>", "events", False),  # '>' needs a token
        ("*.ticket", "events.*", True),
        ("events.a", "events.b", False),
        (">", "anything.at.all", True),
    ],
)
def test_filters_overlap(first: str, second: str, expected: bool) -> None:
    assert filters_overlap(first, second) is expected
    assert filters_overlap(second, first) is expected


_TOKENS = st.sampled_from(["a", "b", "*"])


@given(
    st.lists(_TOKENS, min_size=1, max_size=3),
    st.lists(_TOKENS, min_size=1, max_size=3),
    st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=4),
)
def test_a_subject_both_capture_means_they_overlap(
    first: list[str], second: list[str], subject: list[str]
) -> None:
    a, b, s = ".".join(first), ".".join(second), ".".join(subject)
    if subject_matches(a, s) and subject_matches(b, s):
        assert filters_overlap(a, b)
