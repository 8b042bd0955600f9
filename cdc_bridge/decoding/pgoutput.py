"""pgoutput (proto_version 1) message decoding (pure: payload bytes in, change events out).

Reference: PostgreSQL docs, "Logical Replication Message Formats". Each XLogData payload is
one message whose first byte is its kind. The outbox only needs Begin, Commit, Relation,
Insert and (with ``messages 'true'``) Message; Update, Delete, Truncate, Type and Origin are
checked for a sane header and skipped.

Text values arrive in the connection's client encoding; the replication connection uses
UTF-8, so ``t`` columns are decoded as UTF-8.

Insert decoding is the hot path (every outbox row), so it walks the payload with integer
offsets and precompiled ``Struct`` objects, builds the row in one pass and leaves bounds
checking to one comparison at the end: a slice past the end silently comes back short, so
"did we land exactly on the last byte" catches truncation without a check per column.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cdc_bridge.changes import Begin, Change, ColumnValue, Commit, Insert, LogicalMessage
from cdc_bridge.decoding import DecodeError

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_BEGIN_BODY = struct.Struct(">QqI")  # final_lsn, commit_ts, xid
_COMMIT_BODY = struct.Struct(">BQQq")  # flags, commit_lsn, end_lsn, commit_ts
_MESSAGE_HEAD = struct.Struct(">BQ")  # flags, lsn
_COLUMN_TAIL = struct.Struct(">Ii")  # type_oid, atttypmod

_BYTEA_OID = 17

# Message kinds (first payload byte) and tuple column kinds, as ints: indexing bytes gives int.
_BEGIN = ord("B")
_COMMIT = ord("C")
_RELATION = ord("R")
_INSERT = ord("I")
_MESSAGE = ord("M")
_UPDATE = ord("U")
_DELETE = ord("D")
_TRUNCATE = ord("T")
_TYPE = ord("Y")
_ORIGIN = ord("O")
_NEW_TUPLE = ord("N")
_KEY_TUPLE = ord("K")
_OLD_TUPLE = ord("O")
_COL_TEXT = ord("t")
_COL_NULL = ord("n")
_COL_UNCHANGED_TOAST = ord("u")
_COL_BINARY = ord("b")

_MESSAGE_TRANSACTIONAL = 1


@dataclass(frozen=True, slots=True)
class _Relation:
    table: str  # "schema.table", unquoted
    column_names: tuple[str, ...]
    bytea_columns: tuple[int, ...]  # indexes of bytea columns: text form is hex, we want bytes


class PgoutputDecoder:
    """Decodes one replication stream's pgoutput messages, in order.

    Holds the relation cache: pgoutput sends a Relation message before the first change
    to a table in a session (and again after its schema changes), and Inserts refer to it
    by relation id only. Use one decoder per replication connection.
    """

    def __init__(self) -> None:
        self._relations: dict[int, _Relation] = {}

    def decode(self, payload: bytes) -> Change | None:
        """Decode one pgoutput message; None for messages the outbox does not need.

        Raises DecodeError for a malformed or truncated payload, an unknown message kind,
        or an Insert into a relation no Relation message has described.
        """
        if not payload:
            raise DecodeError("empty pgoutput message")
        kind = payload[0]
        try:
            if kind == _INSERT:
                return self._decode_insert(payload)
            if kind == _BEGIN:
                return _decode_begin(payload)
            if kind == _COMMIT:
                return _decode_commit(payload)
            if kind == _RELATION:
                self._decode_relation(payload)
                return None
            if kind == _MESSAGE:
                return _decode_message(payload)
            if kind in _SKIPPED_KINDS:
                _check_skipped(kind, payload)
                return None
        except (struct.error, IndexError, ValueError) as exc:
            # ValueError covers UnicodeDecodeError, a missing cstring terminator and bad hex.
            raise DecodeError(
                f"malformed pgoutput {chr(kind)!r} message ({len(payload)} bytes): {exc}"
            ) from exc
        raise DecodeError(
            f"unknown pgoutput message kind {bytes([kind])!r} "
            "(expected proto_version 1 without streaming)"
        )

    def _decode_relation(self, payload: bytes) -> None:
        (rel_id,) = _U32.unpack_from(payload, 1)
        namespace, pos = _read_cstring(payload, 5)
        name, pos = _read_cstring(payload, pos)
        pos += 1  # replica identity setting: irrelevant for inserts
        (ncols,) = _U16.unpack_from(payload, pos)
        pos += 2
        column_names: list[str] = []
        bytea_columns: list[int] = []
        for index in range(ncols):
            pos += 1  # flags: 1 = part of the key
            column_name, pos = _read_cstring(payload, pos)
            type_oid, _typmod = _COLUMN_TAIL.unpack_from(payload, pos)
            pos += _COLUMN_TAIL.size
            column_names.append(column_name)
            if type_oid == _BYTEA_OID:
                bytea_columns.append(index)
        _expect_end(payload, pos, "Relation")
        # The docs: an empty namespace means pg_catalog.
        table = f"{namespace or 'pg_catalog'}.{name}"
        self._relations[rel_id] = _Relation(table, tuple(column_names), tuple(bytea_columns))

    def _decode_insert(self, payload: bytes) -> Insert:
        (rel_id,) = _U32.unpack_from(payload, 1)
        relation = self._relations.get(rel_id)
        if relation is None:
            raise DecodeError(
                f"Insert for relation id {rel_id}, but no Relation message described it "
                "(a decoder must see the whole stream from the start of the session)"
            )
        if payload[5] != _NEW_TUPLE:
            raise DecodeError(f"Insert without a new tuple: got {payload[5:6]!r}, expected b'N'")
        names = relation.column_names
        (ncols,) = _U16.unpack_from(payload, 6)
        if ncols != len(names):
            raise DecodeError(
                f"Insert into {relation.table} has {ncols} columns, "
                f"its Relation message described {len(names)}"
            )
        row: dict[str, ColumnValue] = {}
        read_u32 = _U32.unpack_from  # a local: saves two lookups per column
        pos = 8
        for name in names:
            col_kind = payload[pos]
            if col_kind == _COL_TEXT:
                (length,) = read_u32(payload, pos + 1)
                start = pos + 5
                pos = start + length
                row[name] = payload[start:pos].decode()
            elif col_kind == _COL_NULL:
                row[name] = None
                pos += 1
            elif col_kind == _COL_BINARY:
                (length,) = read_u32(payload, pos + 1)
                start = pos + 5
                pos = start + length
                row[name] = payload[start:pos]
            elif col_kind == _COL_UNCHANGED_TOAST:
                # Only updates can leave a TOASTed value unchanged; None is the safe reading.
                row[name] = None
                pos += 1
            else:
                raise DecodeError(
                    f"Insert into {relation.table}: unknown column kind "
                    f"{bytes([col_kind])!r} for column {name!r}"
                )
        _expect_end(payload, pos, "Insert")
        for index in relation.bytea_columns:
            value = row[names[index]]
            if isinstance(value, str):
                row[names[index]] = _bytea_from_text(value)
        return Insert(relation.table, row)


def _decode_begin(payload: bytes) -> Begin:
    _expect_end(payload, 1 + _BEGIN_BODY.size, "Begin")
    final_lsn, commit_ts, xid = _BEGIN_BODY.unpack_from(payload, 1)
    return Begin(xid, final_lsn, commit_ts)


def _decode_commit(payload: bytes) -> Commit:
    _expect_end(payload, 1 + _COMMIT_BODY.size, "Commit")
    _flags, commit_lsn, end_lsn, _commit_ts = _COMMIT_BODY.unpack_from(payload, 1)
    return Commit(commit_lsn, end_lsn)


def _decode_message(payload: bytes) -> LogicalMessage:
    flags, lsn = _MESSAGE_HEAD.unpack_from(payload, 1)
    prefix, pos = _read_cstring(payload, 1 + _MESSAGE_HEAD.size)
    (length,) = _U32.unpack_from(payload, pos)
    pos += 4
    content = payload[pos : pos + length]
    _expect_end(payload, pos + length, "Message")
    return LogicalMessage(
        transactional=bool(flags & _MESSAGE_TRANSACTIONAL),
        prefix=prefix,
        content=bytes(content),
        lsn=lsn,
    )


# Kinds the outbox ignores, with the smallest well-formed body after the kind byte:
# Update/Delete rel_id(4) + tuple kind(1) + ncols(2); Truncate nrels(4) + options(1);
# Type type_oid(4) + two cstrings; Origin lsn(8) + a cstring.
_SKIPPED_KINDS: dict[int, int] = {
    _UPDATE: 7,
    _DELETE: 7,
    _TRUNCATE: 5,
    _TYPE: 6,
    _ORIGIN: 9,
}


def _check_skipped(kind: int, payload: bytes) -> None:
    """Reject obviously broken messages of kinds we otherwise skip, without decoding tuples."""
    minimum = 1 + _SKIPPED_KINDS[kind]
    if len(payload) < minimum:
        raise DecodeError(
            f"truncated pgoutput {chr(kind)!r} message: {len(payload)} bytes, "
            f"needs at least {minimum}"
        )
    if kind in (_UPDATE, _DELETE) and payload[5] not in (_NEW_TUPLE, _KEY_TUPLE, _OLD_TUPLE):
        raise DecodeError(f"pgoutput {chr(kind)!r} message with tuple kind {payload[5:6]!r}")


def _read_cstring(payload: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated UTF-8 string at ``pos`` -> (text, position after the NUL)."""
    end = payload.index(b"\0", pos)  # ValueError when missing: becomes DecodeError
    return payload[pos:end].decode(), end + 1


def _expect_end(payload: bytes, pos: int, what: str) -> None:
    if pos != len(payload):
        problem = "truncated" if pos > len(payload) else f"{len(payload) - pos} trailing bytes"
        raise DecodeError(f"pgoutput {what} message {problem} ({len(payload)} bytes)")


def _bytea_from_text(text: str) -> bytes:
    """bytea's text output form -> its bytes.

    The default ``bytea_output = hex`` gives ``\\x0a0b``; the legacy ``escape`` form
    (printable bytes as-is, ``\\\\`` for a backslash, ``\\ooo`` octal otherwise) is
    accepted too, in case a server or role sets it.
    """
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    return _bytea_from_escape(text)


def _bytea_from_escape(text: str) -> bytes:
    out = bytearray()
    raw = text.encode()
    pos = 0
    while pos < len(raw):
        byte = raw[pos]
        if byte != 0x5C:  # not a backslash
            out.append(byte)
            pos += 1
        elif raw[pos + 1 : pos + 2] == b"\\":
            out.append(0x5C)
            pos += 2
        else:
            digits = raw[pos + 1 : pos + 4]
            if len(digits) != 3 or not all(0x30 <= d <= 0x37 for d in digits):
                raise ValueError(f"bad bytea escape {digits!r} at offset {pos}")
            out.append(int(digits, 8))
            pos += 4
    return bytes(out)
