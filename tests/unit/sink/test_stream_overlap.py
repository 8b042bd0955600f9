"""The line for a stream that cannot be created because other streams store some of its
subjects (issue 29 item 1): shared by `run`, `check` and `init`."""

from __future__ import annotations

from cdc_bridge.sink.connect import stream_overlap


def test_the_line_names_the_other_stream_its_subjects_and_both_fixes() -> None:
    overlap = stream_overlap("CDC", ["cdc.>", "events.>"], [("EVENTS", ("events.>", "cdc.>"))])
    assert overlap.problem == (
        "nats.stream: stream CDC cannot be created: its subjects (cdc.>, events.>) overlap "
        "stream EVENTS (which stores events.>, cdc.>), and JetStream stores a subject in one "
        "stream only"
    )
    assert overlap.fix == (
        "give this bridge's stream subjects no other stream stores (nats.stream.subjects, "
        "with the routes and dead_letter.subject inside them), or set nats.stream.name: "
        "EVENTS to use the existing stream"
    )
    assert overlap.line == f"{overlap.problem}: {overlap.fix}"
    assert "\n" not in overlap.line


def test_every_overlapping_stream_is_named() -> None:
    overlap = stream_overlap("NEW", ["a.>"], [("A", ("a.x",)), ("MIRROR", ())])
    assert "stream A (which stores a.x) and stream MIRROR (which stores no subjects)" in (
        overlap.problem
    )
    assert overlap.fix.endswith("or set nats.stream.name: A to use the existing stream")


def test_a_stream_this_user_may_not_read_is_named_without_its_subjects() -> None:
    overlap = stream_overlap("NEW", ["a.>"], [("A", None)])
    assert "its subjects (a.>) overlap stream A, and JetStream" in overlap.problem
