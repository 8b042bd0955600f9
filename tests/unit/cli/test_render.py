"""The ops CLI's output helpers: human sizes, aligned tables."""

from cdc_bridge.cli.render import count_of, duration_text, human_bytes, key_values, table, time_text


def test_human_bytes() -> None:
    assert human_bytes(None) == "-"
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"
    assert human_bytes(3 * 1024**6) == "3072.0 PiB"  # the largest unit keeps counting


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    lines = table(["slot", "lag"], [["a", "10 B"], ["long_name", "1.5 KiB"]], right=(1,))
    assert lines == [
        "SLOT           LAG",
        "a             10 B",
        "long_name  1.5 KiB",
    ]


def test_table_cells_show_none_and_booleans_plainly() -> None:
    assert table(["x", "y"], [[None, True], [False, 3]]) == ["X   Y", "-   yes", "no  3"]


def test_key_values_align_values() -> None:
    assert key_values([("slot", "s"), ("wal_status", None)]) == [
        "slot        s",
        "wal_status  -",
    ]


def test_duration_text_is_rough_and_readable() -> None:
    assert [duration_text(s) for s in (0, 12.9, 60, 3599, 3600, 7380, 86400, 90000 * 2)] == [
        "0 s", "12 s", "1 min", "59 min", "1 h", "2 h 3 min", "1 d", "2 d 2 h",
    ]  # fmt: skip


def test_time_text_is_iso_8601_utc_with_an_age() -> None:
    epoch = 1796161503.579174
    assert time_text(epoch, now=epoch + 12) == "2026-12-01T21:45:03Z, 12 s ago"
    assert time_text(epoch, now=epoch + 600) == "2026-12-01T21:45:03Z, 10 min ago"
    assert time_text(epoch, now=epoch - 3) == "2026-12-01T21:45:03Z, in 3 s"


def test_count_of_says_one_thing_or_many_things() -> None:
    assert [count_of(n, "stream") for n in (0, 1, 2)] == ["0 streams", "1 stream", "2 streams"]
    assert count_of(1, "batch", "batches") == "1 batch"
    assert count_of(3, "batch", "batches") == "3 batches"
