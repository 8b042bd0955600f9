"""pgoutput (proto_version 1) message decoding (pure: payload bytes in, change events out).

Reference: PostgreSQL docs, "Logical Replication Message Formats". Each XLogData payload is
one message whose first byte is its kind. The outbox only needs Begin, Commit, Relation,
Insert and (with ``messages 'true'``) Message. Tables in ``change_tables`` also need Update
and Delete: their changes become RowChange events, with type names from a resolver (the
daemon's ``format_type()`` lookups) and the replica identity from the Relation's key flags.
Update and Delete of other tables, Truncate, Type and Origin are checked for a sane header
and skipped.

Text values arrive in the connection's client encoding; the replication connection uses
UTF-8, so ``t`` columns are decoded as UTF-8.

Insert decoding is the hot path (every outbox row), so it walks the payload with integer
offsets and precompiled ``Struct`` objects, builds the row in one pass and leaves bounds
checking to one comparison at the end: a slice past the end silently comes back short, so
"did we land exactly on the last byte" catches truncation without a check per column.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cdc_bridge.core.changes import (
    JSON_TYPE_OIDS,
    NO_COLUMNS,
    Begin,
    Change,
    ChangeColumn,
    ColumnValue,
    Commit,
    Insert,
    LogicalMessage,
    RowChange,
)
from cdc_bridge.routing.change_events import UNKNOWN_TYPE, wal2json_type_name, wal2json_value
from cdc_bridge.source.decoding import DecodeError

# (type oid, typmod) -> the type's name as wal2json prints it.
TypeNameResolver = Callable[[int, int], str]

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
_KEY_COLUMN = 1  # Relation column flag: part of the replica identity

# Stands for a column whose TOASTed value an update left unchanged: the server does not send it.
_UNCHANGED = object()


@dataclass(frozen=True, slots=True)
class _ChangeTable:
    """What a change table's Relation message adds for RowChange events."""

    schema: str
    name: str
    type_names: tuple[str, ...]
    type_oids: tuple[int, ...]
    key_columns: tuple[int, ...]  # indexes of the replica identity's columns


@dataclass(frozen=True, slots=True)
class _Relation:
    table: str  # "schema.table", unquoted
    column_names: tuple[str, ...]
    bytea_columns: tuple[int, ...]  # indexes of bytea columns: text form is hex, we want bytes
    json_columns: frozenset[str]  # json and jsonb columns (Insert.json_columns)
    change_table: _ChangeTable | None = None  # set when its changes become RowChange events


def _unknown_type(_type_oid: int, _typmod: int) -> str:
    return UNKNOWN_TYPE


class PgoutputDecoder:
    """Decodes one replication stream's pgoutput messages, in order.

    Holds the relation cache: pgoutput sends a Relation message before the first change
    to a table in a session (and again after its schema changes), and Inserts refer to it
    by relation id only. Use one decoder per replication connection.

    ``change_tables`` ("schema.table") decode into RowChange events, inserts included;
    ``type_name`` names their column types (once per Relation message).
    """

    def __init__(
        self,
        change_tables: frozenset[str] = frozenset(),
        type_name: TypeNameResolver = _unknown_type,
    ) -> None:
        self._relations: dict[int, _Relation] = {}
        self._change_tables = change_tables
        self._type_name = type_name

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
            if kind in (_UPDATE, _DELETE) and self._change_tables:
                change = self._decode_update_or_delete(kind, payload)
                if change is not None:
                    return change
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
        pos += 1  # replica identity setting: the key flags below say what we need
        (ncols,) = _U16.unpack_from(payload, pos)
        pos += 2
        column_names: list[str] = []
        bytea_columns: list[int] = []
        json_columns: list[str] = []
        types: list[tuple[int, int]] = []
        key_columns: list[int] = []
        for index in range(ncols):
            flags = payload[pos]
            column_name, pos = _read_cstring(payload, pos + 1)
            type_oid, typmod = _COLUMN_TAIL.unpack_from(payload, pos)
            pos += _COLUMN_TAIL.size
            column_names.append(column_name)
            types.append((type_oid, typmod))
            if flags & _KEY_COLUMN:
                key_columns.append(index)
            if type_oid == _BYTEA_OID:
                bytea_columns.append(index)
            elif type_oid in JSON_TYPE_OIDS:
                json_columns.append(column_name)
        _expect_end(payload, pos, "Relation")
        # The docs: an empty namespace means pg_catalog.
        schema = namespace or "pg_catalog"
        table = f"{schema}.{name}"
        change_table = None
        if table in self._change_tables:
            change_table = _ChangeTable(
                schema,
                name,
                tuple(wal2json_type_name(self._type_name(oid, typmod)) for oid, typmod in types),
                tuple(oid for oid, _ in types),
                tuple(key_columns),
            )
        self._relations[rel_id] = _Relation(
            table,
            tuple(column_names),
            tuple(bytea_columns),
            frozenset(json_columns) if json_columns else NO_COLUMNS,
            change_table,
        )

    def _decode_insert(self, payload: bytes) -> Insert | RowChange:
        rel_id = _U32.unpack_from(payload, 1)[0]
        relation = self._relations.get(rel_id)
        if relation is None:
            raise DecodeError(
                f"Insert for relation id {rel_id}, but no Relation message described it "
                "(a decoder must see the whole stream from the start of the session)"
            )
        if payload[5] != _NEW_TUPLE:
            raise DecodeError(f"Insert without a new tuple: got {payload[5:6]!r}, expected b'N'")
        if relation.change_table is not None:
            new, pos = _read_tuple(payload, 6, relation, "Insert")
            _expect_end(payload, pos, "Insert")
            return _row_change("I", relation.change_table, relation, new, None)
        names = relation.column_names
        ncols = _U16.unpack_from(payload, 6)[0]
        if ncols != len(names):
            raise DecodeError(
                f"Insert into {relation.table} has {ncols} columns, "
                f"its Relation message described {len(names)}"
            )
        row: dict[str, ColumnValue] = {}
        pos = 8
        for name in names:
            col_kind = payload[pos]
            # Literal kinds, text first: this loop runs for every column of every row.
            if col_kind == 116 or col_kind == _COL_BINARY:  # _COL_TEXT, or binary
                # The length is shifted together byte by byte: compiled by mypyc, that is
                # 2.4 times faster than struct's unpack_from (a call and a tuple per
                # column); interpreted, a third slower. Past the end: IndexError, a
                # DecodeError above.
                start = pos + 5
                pos = start + (
                    (payload[pos + 1] << 24)
                    | (payload[pos + 2] << 16)
                    | (payload[pos + 3] << 8)
                    | payload[pos + 4]
                )
                raw = payload[start:pos]
                row[name] = raw.decode() if col_kind == 116 else raw
            elif col_kind == 110:  # _COL_NULL
                row[name] = None
                pos += 1
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
                row[names[index]] = bytea_from_text(value)
        return Insert(relation.table, row, relation.json_columns)

    def _decode_update_or_delete(self, kind: int, payload: bytes) -> RowChange | None:
        """An Update or Delete of a change table; None for any other table (skipped)."""
        (rel_id,) = _U32.unpack_from(payload, 1)
        relation = self._relations.get(rel_id)
        if relation is None or relation.change_table is None:
            return None
        what = "Update" if kind == _UPDATE else "Delete"
        old: list[object] | None = None
        pos = 5
        if payload[pos] in (_KEY_TUPLE, _OLD_TUPLE):
            old, pos = _read_tuple(payload, pos + 1, relation, what)
        new: list[object] | None = None
        if kind == _UPDATE:
            if payload[pos] != _NEW_TUPLE:
                raise DecodeError(f"Update without a new tuple: got {payload[pos : pos + 1]!r}")
            new, pos = _read_tuple(payload, pos + 1, relation, what)
        elif old is None:
            raise DecodeError(f"Delete without an old tuple: got {payload[5:6]!r}")
        _expect_end(payload, pos, what)
        action = "U" if kind == _UPDATE else "D"
        return _row_change(action, relation.change_table, relation, new, old)


def _read_tuple(
    payload: bytes, pos: int, relation: _Relation, what: str
) -> tuple[list[object], int]:
    """TupleData at ``pos`` -> (one value per column, position after it).

    Values are ColumnValue, or _UNCHANGED for an unchanged TOASTed value. The change
    tables' path: unlike the outbox Insert path it favours plainness over speed.
    """
    (ncols,) = _U16.unpack_from(payload, pos)
    pos += 2
    if ncols != len(relation.column_names):
        raise DecodeError(
            f"{what} of {relation.table} has {ncols} columns, "
            f"its Relation message described {len(relation.column_names)}"
        )
    values: list[object] = []
    for name in relation.column_names:
        col_kind = payload[pos]
        if col_kind in (_COL_TEXT, _COL_BINARY):
            (length,) = _U32.unpack_from(payload, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > len(payload):
                raise DecodeError(f"pgoutput {what} message truncated ({len(payload)} bytes)")
            raw = payload[start:pos]
            values.append(raw.decode() if col_kind == _COL_TEXT else bytes(raw))
        elif col_kind == _COL_NULL:
            values.append(None)
            pos += 1
        elif col_kind == _COL_UNCHANGED_TOAST:
            values.append(_UNCHANGED)
            pos += 1
        else:
            raise DecodeError(
                f"{what} of {relation.table}: unknown column kind "
                f"{bytes([col_kind])!r} for column {name!r}"
            )
    for index in relation.bytea_columns:
        value = values[index]
        if isinstance(value, str):
            values[index] = bytea_from_text(value)
    return values, pos


def _row_change(
    action: str,
    change_table: _ChangeTable,
    relation: _Relation,
    new: list[object] | None,
    old: list[object] | None,
) -> RowChange:
    """The RowChange, with what wal2json would print: unchanged TOAST values left out, and
    the identity from the old tuple, or from the new one when the key did not change."""
    names = relation.column_names
    types = change_table.type_names
    oids = change_table.type_oids

    def column(index: int, value: object) -> ChangeColumn:
        assert value is None or isinstance(value, str | bytes)
        oid = oids[index]
        return ChangeColumn(names[index], types[index], oid, wal2json_value(oid, value))

    columns: tuple[ChangeColumn, ...] = ()
    if new is not None:
        columns = tuple(column(i, v) for i, v in enumerate(new) if v is not _UNCHANGED)
    identity: tuple[ChangeColumn, ...] = ()
    if action != "I":
        source = old if old is not None else new
        assert source is not None
        identity = tuple(
            column(i, source[i]) for i in change_table.key_columns if source[i] is not _UNCHANGED
        )
    return RowChange(action, change_table.schema, change_table.name, columns, identity)


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


def bytea_from_text(text: str) -> bytes:
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
