"""pgoutput decoding: hand-built messages for every kind, plus payloads captured from
PostgreSQL 15 (tests/fixtures/pgoutput, ``pg_logical_slot_peek_binary_changes`` with
proto_version 1 and messages 'true') that also check the hand-built layouts are right."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import paths

from cdc_bridge.core.changes import Begin, ColumnValue, Commit, Insert, LogicalMessage
from cdc_bridge.source.decoding import DecodeError
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder

FIXTURES = paths.FIXTURES / "pgoutput"

TEXT_OID, BYTEA_OID, INT4_OID, UUID_OID, JSONB_OID, TIMESTAMPTZ_OID = 25, 17, 23, 2950, 3802, 1184
OUTBOX_REL_ID = 16384
OUTBOX_COLUMNS = [
    ("id", UUID_OID, True),
    ("aggregate_type", TEXT_OID, False),
    ("aggregate_id", TEXT_OID, False),
    ("event_type", TEXT_OID, False),
    ("payload", JSONB_OID, False),
    ("headers", JSONB_OID, False),
    ("created_at", TIMESTAMPTZ_OID, False),
]

# Column values for the builders: str -> 't', bytes -> 'b', None -> 'n', Unchanged -> 'u'.
UNCHANGED_TOAST = object()


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def begin_message(final_lsn: int, commit_ts: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, commit_ts, xid)


def commit_message(commit_lsn: int, end_lsn: int, commit_ts: int, flags: int = 0) -> bytes:
    return b"C" + struct.pack(">BQQq", flags, commit_lsn, end_lsn, commit_ts)


def relation_message(
    rel_id: int,
    namespace: str,
    name: str,
    columns: Sequence[tuple[str, int, bool]],
    replica_identity: bytes = b"d",
) -> bytes:
    body = struct.pack(">I", rel_id) + cstring(namespace) + cstring(name) + replica_identity
    body += struct.pack(">H", len(columns))
    for column_name, type_oid, is_key in columns:
        body += bytes([1 if is_key else 0]) + cstring(column_name)
        body += struct.pack(">Ii", type_oid, -1)
    return b"R" + body


def tuple_data(values: Sequence[object]) -> bytes:
    body = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            body += b"n"
        elif value is UNCHANGED_TOAST:
            body += b"u"
        elif isinstance(value, str):
            encoded = value.encode()
            body += b"t" + struct.pack(">I", len(encoded)) + encoded
        elif isinstance(value, bytes):
            body += b"b" + struct.pack(">I", len(value)) + value
        else:
            raise TypeError(value)
    return body


def insert_message(rel_id: int, values: Sequence[object]) -> bytes:
    return b"I" + struct.pack(">I", rel_id) + b"N" + tuple_data(values)


def logical_message(transactional: bool, lsn: int, prefix: str, content: bytes) -> bytes:
    head = b"M" + struct.pack(">BQ", int(transactional), lsn) + cstring(prefix)
    return head + struct.pack(">I", len(content)) + content


def decoder_with(*relations: bytes) -> PgoutputDecoder:
    decoder = PgoutputDecoder()
    for relation in relations:
        assert decoder.decode(relation) is None
    return decoder


OUTBOX_RELATION = relation_message(OUTBOX_REL_ID, "public", "outbox", OUTBOX_COLUMNS)
BLOBS_RELATION = relation_message(
    16393, "public", "blobs", [("id", INT4_OID, True), ("data", BYTEA_OID, False)]
)


def test_an_insert_names_its_json_and_jsonb_columns() -> None:
    decoder = decoder_with(OUTBOX_RELATION, BLOBS_RELATION)
    values = ["3f0c", "order", "O-1", "placed", '{"n": 1}', None, "2026-12-01 23:40:33+00"]
    change = decoder.decode(insert_message(OUTBOX_REL_ID, values))
    assert isinstance(change, Insert)
    assert change.json_columns == frozenset({"payload", "headers"})
    blob = decoder.decode(insert_message(16393, ["1", b"\x00"]))
    assert isinstance(blob, Insert) and blob.json_columns == frozenset()


class TestTransactionBoundaries:
    def test_begin(self) -> None:
        change = PgoutputDecoder().decode(begin_message(0x16_B374D848, 770_000_000, 727))
        assert change == Begin(xid=727, final_lsn=0x16_B374D848, commit_time=770_000_000)

    def test_commit(self) -> None:
        change = PgoutputDecoder().decode(commit_message(0x1545280, 0x15452B0, 770_000_000))
        assert change == Commit(commit_lsn=0x1545280, end_lsn=0x15452B0)

    def test_largest_values(self) -> None:
        decoder = PgoutputDecoder()
        assert decoder.decode(begin_message(2**64 - 1, -1, 2**32 - 1)) == Begin(
            2**32 - 1, 2**64 - 1, -1
        )
        assert decoder.decode(commit_message(2**64 - 2, 2**64 - 1, -1)) == Commit(
            2**64 - 2, 2**64 - 1
        )


class TestRelationAndInsert:
    def test_relation_returns_none(self) -> None:
        assert PgoutputDecoder().decode(OUTBOX_RELATION) is None

    def test_insert_text_columns(self) -> None:
        decoder = decoder_with(OUTBOX_RELATION)
        values = ["0b7e…", "order", "o-42", "order.created", '{"a": 1}', "{}", "2024-05-01"]
        change = decoder.decode(insert_message(OUTBOX_REL_ID, values))
        assert change == Insert(
            table="public.outbox",
            row=dict(zip([c[0] for c in OUTBOX_COLUMNS], values, strict=True)),
        )

    def test_insert_nulls_and_unicode(self) -> None:
        decoder = decoder_with(OUTBOX_RELATION)
        values = ["id", "kunde", "Müller-ß-日本", "kunde.geändert", '{"n": "Zoë ☃ 🎉"}', None, ""]
        change = decoder.decode(insert_message(OUTBOX_REL_ID, values))
        assert isinstance(change, Insert)
        assert change.row["aggregate_id"] == "Müller-ß-日本"
        assert change.row["payload"] == '{"n": "Zoë ☃ 🎉"}'
        assert change.row["headers"] is None
        assert change.row["created_at"] == ""

    def test_bytea_hex_text_becomes_bytes(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        change = decoder.decode(insert_message(16393, ["1", "\\x000102ff"]))
        assert change == Insert("public.blobs", {"id": "1", "data": b"\x00\x01\x02\xff"})

    def test_bytea_empty_and_null(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        assert decoder.decode(insert_message(16393, ["2", "\\x"])) == Insert(
            "public.blobs", {"id": "2", "data": b""}
        )
        assert decoder.decode(insert_message(16393, ["3", None])) == Insert(
            "public.blobs", {"id": "3", "data": None}
        )

    def test_bytea_escape_format(self) -> None:
        # bytea_output = escape: printable bytes as-is, \\ for a backslash, \ooo otherwise.
        decoder = decoder_with(BLOBS_RELATION)
        change = decoder.decode(insert_message(16393, ["4", "ab\\\\c\\000\\377"]))
        assert change == Insert("public.blobs", {"id": "4", "data": b"ab\\c\x00\xff"})

    @pytest.mark.parametrize("bad", ["\\xzz", "\\x0", "bad\\9", "bad\\"])
    def test_malformed_bytea_text(self, bad: str) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        with pytest.raises(DecodeError, match="malformed pgoutput 'I'"):
            decoder.decode(insert_message(16393, ["5", bad]))

    def test_binary_format_column_is_bytes(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        change = decoder.decode(insert_message(16393, [b"\x00\x00\x00\x07", b"\xde\xad"]))
        assert change == Insert("public.blobs", {"id": b"\x00\x00\x00\x07", "data": b"\xde\xad"})

    def test_unchanged_toast_reads_as_none(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        change = decoder.decode(insert_message(16393, ["6", UNCHANGED_TOAST]))
        assert change == Insert("public.blobs", {"id": "6", "data": None})

    def test_empty_namespace_means_pg_catalog(self) -> None:
        decoder = decoder_with(relation_message(99, "", "pg_thing", [("x", TEXT_OID, False)]))
        assert decoder.decode(insert_message(99, ["v"])) == Insert(
            "pg_catalog.pg_thing", {"x": "v"}
        )

    def test_names_are_unquoted(self) -> None:
        columns = [("Mixed Case", TEXT_OID, False)]
        decoder = decoder_with(relation_message(7, "My Schema", "Ödön.table", columns))
        assert decoder.decode(insert_message(7, ["v"])) == Insert(
            "My Schema.Ödön.table", {"Mixed Case": "v"}
        )

    def test_zero_column_relation(self) -> None:
        decoder = decoder_with(relation_message(8, "public", "empty", []))
        assert decoder.decode(insert_message(8, [])) == Insert("public.empty", {})

    def test_later_relation_replaces_earlier(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        altered = relation_message(
            16393,
            "public",
            "blobs",
            [("id", INT4_OID, True), ("data", TEXT_OID, False), ("extra", INT4_OID, False)],
        )
        assert decoder.decode(altered) is None
        # "data" is text now: its value must no longer be read as bytea hex.
        assert decoder.decode(insert_message(16393, ["1", "\\x00", "7"])) == Insert(
            "public.blobs", {"id": "1", "data": "\\x00", "extra": "7"}
        )
        with pytest.raises(DecodeError, match="has 2 columns"):
            decoder.decode(insert_message(16393, ["1", "\\x00"]))

    def test_relations_are_cached_per_id(self) -> None:
        decoder = decoder_with(OUTBOX_RELATION, BLOBS_RELATION)
        change = decoder.decode(insert_message(16393, ["1", None]))
        assert isinstance(change, Insert)
        assert change.table == "public.blobs"
        change = decoder.decode(insert_message(OUTBOX_REL_ID, ["a"] * 7))
        assert isinstance(change, Insert)
        assert change.table == "public.outbox"

    def test_unknown_relation(self) -> None:
        decoder = decoder_with(OUTBOX_RELATION)
        with pytest.raises(DecodeError, match="relation id 4242, but no Relation message"):
            decoder.decode(insert_message(4242, ["x"]))

    def test_insert_without_new_tuple_marker(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        message = bytearray(insert_message(16393, ["1", None]))
        message[5] = ord("K")
        with pytest.raises(DecodeError, match="without a new tuple"):
            decoder.decode(bytes(message))

    def test_unknown_column_kind(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        message = insert_message(16393, ["1"]).replace(b"\x00\x01t", b"\x00\x02t") + b"x"
        with pytest.raises(DecodeError, match="unknown column kind b'x' for column 'data'"):
            decoder.decode(message)

    def test_decoder_survives_an_error(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        with pytest.raises(DecodeError):
            decoder.decode(insert_message(16393, ["1", "\\xzz"]))
        assert decoder.decode(insert_message(16393, ["1", None])) == Insert(
            "public.blobs", {"id": "1", "data": None}
        )


class TestLogicalMessage:
    def test_transactional(self) -> None:
        change = PgoutputDecoder().decode(logical_message(True, 0x1545280, "cdc-bridge", b"hi"))
        assert change == LogicalMessage(True, "cdc-bridge", b"hi", 0x1545280)

    def test_non_transactional_binary_content(self) -> None:
        change = PgoutputDecoder().decode(logical_message(False, 9, "p", b"\x00\xff\n"))
        assert change == LogicalMessage(False, "p", b"\x00\xff\n", 9)
        assert isinstance(change, LogicalMessage)
        assert type(change.content) is bytes

    def test_empty_prefix_and_content(self) -> None:
        change = PgoutputDecoder().decode(logical_message(True, 1, "", b""))
        assert change == LogicalMessage(True, "", b"", 1)


class TestIgnoredKinds:
    @pytest.mark.parametrize(
        "message",
        [
            pytest.param(
                b"U" + struct.pack(">I", 16393) + b"N" + tuple_data(["1", None]), id="update"
            ),
            pytest.param(
                b"U"
                + struct.pack(">I", 16393)
                + b"O"
                + tuple_data(["1", "old"])
                + b"N"
                + tuple_data(["1", UNCHANGED_TOAST]),
                id="update-with-old",
            ),
            pytest.param(
                b"D" + struct.pack(">I", 16393) + b"K" + tuple_data(["1", None]), id="delete"
            ),
            pytest.param(b"T" + struct.pack(">IBI", 1, 0, 16393), id="truncate"),
            pytest.param(
                b"Y" + struct.pack(">I", 16500) + cstring("public") + cstring("mood"), id="type"
            ),
            pytest.param(b"O" + struct.pack(">Q", 0x1000) + cstring("origin_a"), id="origin"),
        ],
    )
    def test_returns_none(self, message: bytes) -> None:
        # The relation is unknown on purpose: skipping must not depend on the cache.
        assert PgoutputDecoder().decode(message) is None

    @pytest.mark.parametrize(
        "message",
        [b"U\x00\x00", b"D\x00\x00\x40\x09K\x00", b"T\x00", b"Y\x00\x00\x00\x01\x00", b"O\x00"],
    )
    def test_truncated_header_is_decode_error(self, message: bytes) -> None:
        with pytest.raises(DecodeError, match="truncated"):
            PgoutputDecoder().decode(message)

    def test_update_with_bad_tuple_kind(self) -> None:
        with pytest.raises(DecodeError, match="tuple kind"):
            PgoutputDecoder().decode(b"U" + struct.pack(">I", 1) + b"Z\x00\x00")


class TestMalformed:
    def test_empty_payload(self) -> None:
        with pytest.raises(DecodeError, match="empty"):
            PgoutputDecoder().decode(b"")

    @pytest.mark.parametrize("kind", [b"S", b"E", b"A", b"c", b"P", b"x", b"\x00"])
    def test_unknown_message_kind(self, kind: bytes) -> None:
        with pytest.raises(DecodeError, match="unknown pgoutput message kind"):
            PgoutputDecoder().decode(kind + bytes(30))

    @pytest.mark.parametrize(
        ("relations", "message"),
        [
            pytest.param((), begin_message(1, 2, 3), id="begin"),
            pytest.param((), commit_message(1, 2, 3), id="commit"),
            pytest.param((), OUTBOX_RELATION, id="relation"),
            pytest.param((), logical_message(True, 5, "prefix", b"content"), id="message"),
            pytest.param(
                (OUTBOX_RELATION,),
                insert_message(OUTBOX_REL_ID, ["a", None, "ü", "b", "{}", None, "c"]),
                id="insert",
            ),
            pytest.param((BLOBS_RELATION,), insert_message(16393, [b"\x01", "\\xff"]), id="bytea"),
        ],
    )
    def test_every_truncation_and_trailing_garbage(
        self, relations: tuple[bytes, ...], message: bytes
    ) -> None:
        decoder = decoder_with(*relations)
        decoder.decode(message)  # whole, it is well-formed
        for length in range(1, len(message)):
            with pytest.raises(DecodeError):
                decoder.decode(message[:length])
        with pytest.raises(DecodeError):
            decoder.decode(message + b"\x00")

    def test_invalid_utf8_text(self) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        message = b"I" + struct.pack(">IcHcI", 16393, b"N", 2, b"t", 2) + b"\xc3\x28" + b"n"
        with pytest.raises(DecodeError, match="malformed pgoutput 'I'"):
            decoder.decode(message)

    @given(st.binary(max_size=80))
    def test_arbitrary_bytes_decode_or_raise_decode_error(self, payload: bytes) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        with contextlib.suppress(DecodeError):
            decoder.decode(payload)

    @given(st.binary(max_size=40))
    def test_arbitrary_insert_bodies(self, body: bytes) -> None:
        decoder = decoder_with(BLOBS_RELATION)
        with contextlib.suppress(DecodeError):
            decoder.decode(b"I" + struct.pack(">I", 16393) + b"N" + body)


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


class TestCapturedPayloads:
    """Payloads PostgreSQL 15 really sent (see sql/outbox.sql for the table)."""

    def test_hand_built_layouts_match_the_captured_ones(self) -> None:
        assert fixture("02_outbox_relation") == OUTBOX_RELATION
        assert fixture("03_outbox_insert_full") == insert_message(
            OUTBOX_REL_ID,
            [
                "0b7e1c2a-9d44-4f5e-8a51-3c2d1e0f9a77",
                "order",
                "o-42",
                "order.created",
                '{"items": ["a", "b"], "total": 12.5}',
                '{"trace": "t-1"}',
                "2024-05-01 12:00:00+00",
            ],
        )
        assert fixture("05_message_transactional") == logical_message(
            True, 0x1545280, "cdc-bridge", b"hello tx"
        )
        begin = fixture("01_outbox_begin")
        assert begin == begin_message(0x1545280, struct.unpack_from(">q", begin, 9)[0], 727)
        commit = fixture("06_outbox_commit")
        assert commit == commit_message(
            0x1545280, 0x15452B0, struct.unpack_from(">q", commit, 18)[0]
        )

    def test_whole_captured_stream(self) -> None:
        decoder = PgoutputDecoder()
        decoded = [decoder.decode(path.read_bytes()) for path in sorted(FIXTURES.glob("*.bin"))]
        # Commit times are real clock readings from the capture: check them apart.
        assert all(c.commit_time > 0 for c in decoded if isinstance(c, Begin))
        decoded = [
            dataclasses.replace(c, commit_time=0) if isinstance(c, Begin) else c for c in decoded
        ]
        outbox_row: dict[str, ColumnValue] = {
            "id": "1c8f2d3b-0e55-4a6f-9b62-4d3e2f1a0b88",
            "aggregate_type": "kunde",
            "aggregate_id": "Müller-ß-日本",
            "event_type": "kunde.geändert",
            "payload": '{"name": "Zoë ☃"}',
            "headers": None,
            "created_at": "2024-05-01 12:00:01+00",
        }
        assert decoded == [
            Begin(727, 0x1545280),
            None,
            Insert(
                "public.outbox",
                {
                    "id": "0b7e1c2a-9d44-4f5e-8a51-3c2d1e0f9a77",
                    "aggregate_type": "order",
                    "aggregate_id": "o-42",
                    "event_type": "order.created",
                    "payload": '{"items": ["a", "b"], "total": 12.5}',
                    "headers": '{"trace": "t-1"}',
                    "created_at": "2024-05-01 12:00:00+00",
                },
            ),
            Insert("public.outbox", outbox_row),
            LogicalMessage(True, "cdc-bridge", b"hello tx", 0x1545280),
            Commit(0x1545280, 0x15452B0),
            LogicalMessage(False, "cdc-bridge", b"\x00\xff\x10", 0x15452F0),
            Begin(728, 0x15454D8),
            None,
            Insert("public.blobs", {"id": "1", "data": b"\x00\x01\x02\xff", "note": "bin"}),
            Insert("public.blobs", {"id": "2", "data": None, "note": None}),
            Insert("public.blobs", {"id": "3", "data": b"", "note": ""}),
            Commit(0x15454D8, 0x1545508),
            Begin(730, 0x1545948),
            None,  # Relation again after ALTER TABLE ... ADD COLUMN extra
            Insert(
                "public.blobs",
                {"id": "4", "data": b"\xde\xad\xbe\xef", "note": "after alter", "extra": "7"},
            ),
            Commit(0x1545948, 0x1545978),
            Begin(731, 0x15459C8),
            None,  # Update
            Commit(0x15459C8, 0x15459F8),
            Begin(732, 0x1545A38),
            None,  # Delete
            Commit(0x1545A38, 0x1545A68),
            Begin(733, 0x1546608),
            None,  # Relation
            None,  # Truncate
            Commit(0x1546608, 0x1546778),
        ]
