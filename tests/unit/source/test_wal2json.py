"""wal2json format-version 2 decoding: payloads captured from wal2json 2.5 on PostgreSQL 15
(tests/fixtures/wal2json, see capture.py there), checked field by field and against
pgoutput's decoding of the same workload, plus hand-written edge cases."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import paths

from cdc_bridge.core.changes import Begin, Change, Commit, Insert, LogicalMessage
from cdc_bridge.core.lsn import format_lsn, parse_lsn
from cdc_bridge.source.decoding import DecodeError
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder
from cdc_bridge.source.decoding.wal2json import Wal2jsonDecoder, wal2json_options

FIXTURES = paths.FIXTURES / "wal2json"
PREFIXES = ("orders", "billing")  # capture.py's add-msg-prefixes


def fixture_lines(name: str) -> list[bytes]:
    return (FIXTURES / f"{name}.jsonl").read_bytes().splitlines()


def decode_fixture(name: str) -> list[Change | None]:
    decoder = Wal2jsonDecoder()
    return [decoder.decode(line) for line in fixture_lines(name)]


def all_wal2json_changes() -> list[Change]:
    names = sorted(path.stem for path in FIXTURES.glob("*.jsonl"))
    return [c for name in names for c in decode_fixture(name) if c is not None]


def all_pgoutput_changes() -> list[Change]:
    decoder = PgoutputDecoder()
    lines = (FIXTURES / "pgoutput.hex").read_text().split()
    return [c for line in lines if (c := decoder.decode(bytes.fromhex(line))) is not None]


# --- captured output, field by field --------------------------------------------------------


def test_begin_and_commit_carry_the_commit_lsn_and_the_end_lsn() -> None:
    lines = fixture_lines("01_outbox_transaction")
    changes = decode_fixture("01_outbox_transaction")
    begin, commit = changes[0], changes[-1]
    raw_begin, raw_commit = json.loads(lines[0]), json.loads(lines[-1])
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert (begin.xid, begin.final_lsn) == (raw_begin["xid"], parse_lsn(raw_begin["lsn"]))
    assert commit == Commit(parse_lsn(raw_commit["lsn"]), parse_lsn(raw_commit["nextlsn"]))
    # B already knows the commit record's LSN, the one C reports, ahead of every row
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn


def test_commit_time_is_microseconds_since_2000() -> None:
    begin = decode_fixture("01_outbox_transaction")[0]
    assert isinstance(begin, Begin)
    raw = json.loads(fixture_lines("01_outbox_transaction")[0])["timestamp"]
    _seconds, fraction = raw.rsplit("+", 1)[0].split(".")
    assert raw.endswith("+00")
    # 2026-... is far past 2000; the microseconds are the printed ones
    assert begin.commit_time % 1_000_000 == int(fraction)
    assert begin.commit_time > 26 * 365 * 86400 * 1_000_000


def test_outbox_rows_are_postgres_text() -> None:
    changes = decode_fixture("01_outbox_transaction")
    inserts = [c for c in changes if isinstance(c, Insert)]
    assert [i.table for i in inserts] == ["public.outbox", "public.outbox"]
    first, second = inserts[0].row, inserts[1].row
    assert first["id"] == "6b1f5a5e-6f49-4c51-9f8e-3c1b7d1f0a01"
    # jsonb exactly as PostgreSQL prints it (keys sorted, 1e3 -> 1000, 2.50 kept)
    assert first["payload"] == '{"a": "é 🎫 \\n \\"q\\"", "b": [1, 2.50, 1000], "z": null}'
    assert first["headers"] == '{"Title": "工单 ✓", "Trace-Id": "abc"}'
    assert isinstance(first["created_at"], str) and first["created_at"].endswith("+00")
    assert second["payload"] == '"a top-level string \\\\ /"'
    assert second["headers"] is None


def test_an_insert_names_its_json_and_jsonb_columns() -> None:
    inserts = [c for c in decode_fixture("01_outbox_transaction") if isinstance(c, Insert)]
    assert [i.json_columns for i in inserts] == [frozenset({"payload", "headers"})] * 2


def test_bytea_becomes_bytes() -> None:
    rows = {c.row["id"]: c.row for c in decode_fixture("02_bytea") if isinstance(c, Insert)}
    assert rows["b-all"]["payload"] == bytes(range(256))
    assert rows["b-null"]["payload"] is None
    assert rows["b-empty"]["payload"] == b""
    assert rows["b-nul"]["payload"] == b"\x00\x00"
    assert rows["b-all"]["kind"] == "allbytes"  # text columns stay text


def test_numbers_and_booleans_keep_postgres_text_form() -> None:
    rows = {c.row["id"]: c.row for c in decode_fixture("03_types") if isinstance(c, Insert)}
    one, two, three = rows["1"], rows["2"], rows["3"]
    assert one["n"] == "12345678901234567890.123400"  # not rounded through a float
    assert one["bi"] == "9007199254740993"  # beyond a double's integers
    assert one["s"] == "-7"
    assert one["f"] == "1.5e+300"
    assert one["b"] == "t" and two["b"] == "f"
    assert two["n"] == "0.00000000000000000001"
    assert two["r"] == "-0"
    assert one["j"] == '{ "a" :  1,"a":2 }'  # json: the text as written, duplicates and all
    assert one["jb"] == '{"e": 100, "k": 1.0, "s": "ü"}'
    assert one["ts"] == "2024-01-02 03:04:05.123456+00"
    assert one["t"] == "2024-01-02 03:04:05" and one["d"] == "2024-02-29"
    assert one["arr"] == "{1,2,NULL}" and two["arr"] == "{}"
    assert one["txt"] == ""  # empty text is not NULL
    assert all(value is None for key, value in three.items() if key != "id")


def test_messages() -> None:
    changes = decode_fixture("05_messages")
    messages = [c for c in changes if isinstance(c, LogicalMessage)]
    assert [(m.transactional, m.prefix) for m in messages] == [
        (False, "orders"),
        (True, "orders"),
        (True, "billing"),  # 'other' was filtered out by add-msg-prefixes
    ]
    envelope = json.loads(messages[1].content)
    assert envelope["payload"] == {"total": 12.5, "items": ["é", "🎫"]}
    assert messages[2].content == "not an envelope: ü".encode()
    assert isinstance(changes[0], LogicalMessage)  # non-transactional: before any Begin


def test_a_transaction_without_outbox_rows_is_begin_and_commit() -> None:
    changes = decode_fixture("06_other_tables_only")
    assert [type(c) for c in changes] == [Begin, Commit]


# --- parity with pgoutput on the same workload ----------------------------------------------


def _comparable(changes: list[Change]) -> list[Change]:
    """What the pipeline acts on: empty transactions and other prefixes dropped.

    pgoutput skips transactions without published changes (PostgreSQL 15) and has no
    prefix filter; wal2json sends Begin/Commit for every transaction and filters messages
    by add-msg-prefixes. Neither difference reaches the published events.
    """
    kept: list[Change] = []
    for change in changes:
        if isinstance(change, LogicalMessage) and change.prefix not in PREFIXES:
            continue
        if isinstance(change, Commit) and kept and isinstance(kept[-1], Begin):
            kept.pop()  # an empty transaction
            continue
        kept.append(change)
    return kept


def test_same_changes_as_pgoutput_except_nan_and_infinity() -> None:
    from_wal2json = _comparable(all_wal2json_changes())
    from_pgoutput = _comparable(all_pgoutput_changes())
    assert len(from_wal2json) == len(from_pgoutput) > 20
    differences = [
        (ours, theirs)
        for ours, theirs in zip(from_wal2json, from_pgoutput, strict=True)
        if ours != theirs
    ]
    # The one known gap: wal2json 2.5 writes NaN and +-Infinity as JSON null.
    assert len(differences) == 1
    ours, theirs = differences[0]
    assert isinstance(ours, Insert) and isinstance(theirs, Insert)
    changed = {k for k in theirs.row if ours.row[k] != theirs.row[k]}
    assert changed == {"n", "f", "r"}
    assert (theirs.row["n"], theirs.row["f"], theirs.row["r"]) == ("NaN", "Infinity", "-Infinity")
    assert (ours.row["n"], ours.row["f"], ours.row["r"]) == (None, None, None)


# --- options ----------------------------------------------------------------------------


def test_options_name_the_tables_and_prefixes() -> None:
    options = dict(wal2json_options(("public.outbox", "billing.outbox"), ("orders", "a.b")))
    assert options["format-version"] == "2"
    assert options["add-tables"] == "public.outbox,billing.outbox"
    assert options["add-msg-prefixes"] == "orders,a.b"
    assert options["actions"] == "insert"
    for flag in ("include-xids", "include-lsn", "include-transaction", "include-type-oids"):
        assert options[flag] == "1"


def test_options_without_tables_filter_every_table() -> None:
    options = dict(wal2json_options((), ("orders",)))
    assert options["filter-tables"] == "*.*" and "add-tables" not in options


def test_options_without_prefixes_leave_messages_unfiltered() -> None:
    assert "add-msg-prefixes" not in dict(wal2json_options(("public.outbox",), ()))


# --- hand-written edge cases ------------------------------------------------------------


def insert_line(*columns: dict[str, object]) -> bytes:
    document = {
        "action": "I",
        "xid": 5,
        "lsn": "0/10",
        "schema": "s",
        "table": "t",
        "columns": list(columns),
    }
    return json.dumps(document).encode()


def test_bytea_is_recognised_by_type_name_without_type_oids() -> None:
    line = insert_line({"name": "b", "type": "bytea", "value": "0aff"})
    assert Wal2jsonDecoder().decode(line) == Insert("s.t", {"b": b"\n\xff"})


def test_bytea_with_its_hex_prefix_is_accepted() -> None:
    line = insert_line({"name": "b", "type": "bytea", "typeoid": 17, "value": "\\x0aff"})
    assert Wal2jsonDecoder().decode(line) == Insert("s.t", {"b": b"\n\xff"})


def test_a_text_column_named_like_hex_stays_text() -> None:
    line = insert_line({"name": "b", "type": "text", "typeoid": 25, "value": "0aff"})
    assert Wal2jsonDecoder().decode(line) == Insert("s.t", {"b": "0aff"})


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("1", "1"),
        ("-0", "-0"),
        ("1e-05", "1e-05"),
        ("1.50", "1.50"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
    ],
)
def test_json_numbers_keep_their_literal_text(raw: str, text: str) -> None:
    line = b'{"action":"I","xid":1,"lsn":"0/1","schema":"s","table":"t","columns":[' + (
        b'{"name":"n","type":"numeric","typeoid":1700,"value":' + raw.encode() + b"}]}"
    )
    assert Wal2jsonDecoder().decode(line) == Insert("s.t", {"n": text})


@given(st.text())
def test_any_text_value_round_trips(value: str) -> None:
    line = insert_line({"name": "c", "type": "text", "typeoid": 25, "value": value})
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:  # lone surrogates cannot be sent by wal2json at all
        return
    assert Wal2jsonDecoder().decode(line) == Insert("s.t", {"c": value})


def test_message_content_that_is_not_utf8_is_kept_as_bytes() -> None:
    line = (
        b'{"action":"M","xid":7,"lsn":"0/20","transactional":true,"prefix":"orders",'
        b'"content":"a\xffb"}'
    )
    change = Wal2jsonDecoder().decode(line)
    assert change == LogicalMessage(True, "orders", b"a\xffb", parse_lsn("0/20"))


def test_a_row_that_is_not_utf8_is_refused() -> None:
    line = insert_line({"name": "c", "type": "text", "value": "x"}).replace(b"x", b"\xff")
    with pytest.raises(DecodeError, match="UTF-8 database"):
        Wal2jsonDecoder().decode(line)


def test_actions_not_asked_for_are_skipped() -> None:
    for action in ("U", "D", "T"):
        assert Wal2jsonDecoder().decode(json.dumps({"action": action}).encode()) is None


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"[1]", "JSON list"),
        (b'{"action":"X"}', "unknown wal2json action 'X'"),
        (b'{"xid":1}', "unknown wal2json action None"),
        (b'{"action":"B","xid":1}', "malformed wal2json 'B' message: KeyError"),
        (b'{"action":"B","xid":1,"lsn":7}', "not an LSN"),
        (b'{"action":"B","xid":1,"lsn":"nope"}', "not an LSN"),
        (b'{"action":"C","lsn":"0/1"}', "nextlsn"),
        (
            b'{"action":"M","xid":1,"lsn":"0/1","transactional":1,"prefix":"p","content":""}',
            "not true or false",
        ),
        (b'{"action":"I","schema":"s","table":"t","columns":{}}', "not an array"),
        (
            b'{"action":"I","schema":"s","table":"t","columns":[{"name":"a","value":[1]}]}',
            "JSON list value",
        ),
        (
            b'{"action":"I","schema":"s","table":"t","columns":[{"name":"a","type":"bytea",'
            b'"value":"zz"}]}',
            "ValueError",
        ),
    ],
)
def test_malformed_payloads_raise_decode_error(payload: bytes, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem.replace("(", r"\(")):
        Wal2jsonDecoder().decode(payload)


def test_begin_without_a_timestamp_has_no_commit_time() -> None:
    change = Wal2jsonDecoder().decode(b'{"action":"B","xid":9,"lsn":"0/A","nextlsn":"0/B"}')
    assert change == Begin(9, 10, 0)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2000-01-01 00:00:00+00", 0),
        ("2000-01-01 00:00:01.5+00", 1_500_000),
        ("2000-01-01 05:30:00+05:30", 0),
        ("1999-12-31 19:00:00-05", 0),
        ("31/12/1999 19:00:00 EST", 0),  # a DateStyle we cannot read: unknown, not an error
        ("2000-01-01 00:00:00", 0),  # no zone: unknown
    ],
)
def test_commit_time_from_the_timestamp(timestamp: str, expected: int) -> None:
    line = json.dumps({"action": "B", "xid": 1, "lsn": "0/1", "timestamp": timestamp})
    change = Wal2jsonDecoder().decode(line.encode())
    assert isinstance(change, Begin) and change.commit_time == expected


def test_lsns_are_formatted_like_postgres() -> None:
    begin = decode_fixture("02_bytea")[0]
    assert isinstance(begin, Begin)
    assert format_lsn(begin.final_lsn) == json.loads(fixture_lines("02_bytea")[0])["lsn"]
