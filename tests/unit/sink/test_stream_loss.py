"""The decision whether the stream lost what it acked (sink/stream_loss.py)."""

from datetime import UTC, datetime

from cdc_bridge.sink.stream_loss import StreamLook, StreamSeen, first_seen, lost_window, stream_loss

CREATED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
PUBLISHED = [
    ("routes[0].subject", "events.*"),
    ("routes[1].subject", "audit.*"),  # stored by another stream: not this one's to keep
    ("dead_letter.subject", "events.dead"),
]


def seen(last_seq: int = 10, subjects: tuple[str, ...] = ("events.>",)) -> StreamSeen:
    return first_seen("EVENTS", StreamLook(CREATED, last_seq, subjects), PUBLISHED)


def test_what_the_stream_served_at_first_is_remembered() -> None:
    assert seen().served == (
        ("routes[0].subject", "events.*"),
        ("dead_letter.subject", "events.dead"),
    )


def test_an_unchanged_stream_that_moved_on_lost_nothing() -> None:
    look = StreamLook(CREATED, 25, ("events.>",))
    assert stream_loss(seen(), look) is None
    assert seen().after(look).last_seq == 25


def test_purges_and_expiry_keep_the_last_sequence_so_they_are_no_loss() -> None:
    assert stream_loss(seen(), StreamLook(CREATED, 10, ("events.>",))) is None


def test_a_deleted_stream() -> None:
    assert stream_loss(seen(), None) == "stream EVENTS was deleted"
    assert "every message it held since it was created at 2026-05-01T12:00:00+00:00" in (
        lost_window(seen(), None)
    )


def test_a_re_created_stream_even_with_more_messages() -> None:
    later = datetime(2026, 5, 1, 12, 5, tzinfo=UTC)
    look = StreamLook(later, 400, ("events.>",))
    assert stream_loss(seen(), look) == "stream EVENTS was re-created at 2026-05-01T12:05:00+00:00"
    assert "through sequence 10" in lost_window(seen(), look)


def test_a_last_sequence_that_went_back() -> None:
    look = StreamLook(CREATED, 4, ("events.>",))
    assert stream_loss(seen(), look) == "stream EVENTS's last sequence went back from 10 to 4"
    assert lost_window(seen(), look) == "messages 5..10 of it are gone"


def test_subjects_that_no_longer_cover_a_route() -> None:
    look = StreamLook(CREATED, 12, ("orders.>",))
    assert stream_loss(seen(), look) == (
        "stream EVENTS's subjects were changed to orders.>: they no longer cover "
        "routes[0].subject (events.*)"
    )
    assert lost_window(seen(), look) == (
        "its rows would be dead-lettered from now on; nothing stored was lost"
    )


def test_subjects_that_still_cover_part_of_a_route_are_no_loss() -> None:
    # Rows of other types are dead-lettered one by one: the router's job, as at start-up.
    assert stream_loss(seen(), StreamLook(CREATED, 12, ("events.ticket", "events.dead"))) is None
