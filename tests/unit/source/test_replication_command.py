"""The START_REPLICATION command text (pure)."""

from __future__ import annotations

from cdc_bridge.source.replication import start_replication_command


def test_names_and_values_are_quoted() -> None:
    command = start_replication_command(
        "cdc_bridge", 0x16B3748, [("proto_version", "1"), ("format-version", "2")]
    )
    assert command == (
        'START_REPLICATION SLOT "cdc_bridge" LOGICAL 0/16B3748 '
        "(\"proto_version\" '1', \"format-version\" '2')"
    )


def test_quotes_inside_names_and_values_are_doubled() -> None:
    command = start_replication_command('we"ird', 0, [("add-tables", "a.b,c'd")])
    assert command == (
        'START_REPLICATION SLOT "we""ird" LOGICAL 0/0 ("add-tables" \'a.b,c\'\'d\')'
    )
