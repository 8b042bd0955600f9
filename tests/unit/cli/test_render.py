"""The ops CLI's output helpers: human sizes, aligned tables."""

from cdc_bridge.cli.render import human_bytes, key_values, table


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
