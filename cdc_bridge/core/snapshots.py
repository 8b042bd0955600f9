"""Snapshot rows in the WAL: what ``cdc-bridge snapshot`` writes and the bridge reads.

The snapshot command reads a change table (``outbox.change_tables``) in chunks, in key
order, each chunk in one transaction that locks its rows against writers
(``SELECT ... FOR SHARE``) and writes every row it read into the WAL as a transactional
logical decoding message under ``SNAPSHOT_PREFIX``. The bridge turns each such message
into a change event with action ``R`` (read) at the position where that transaction
commits. A writer that changes a row of the chunk waits for the chunk's commit, so its
change commits, and is published, after the row's ``R``; a change committed before the
chunk read the row is published before it and the ``R`` already holds its result. No
merge step is needed: for each key a consumer never sees an ``R`` older than a change it
has already seen.

One message per row. Its content is a UTF-8 JSON object (``SNAPSHOT_FORMAT_VERSION``)::

    {"v": 1, "snapshot": "orders-20261208T021500Z", "schema": "public",
     "table": "orders", "key": ["id"],
     "columns": [["id", "integer", 23, "1"], ["note", "text", 25, null]]}

``columns`` are the table's columns in table order (no generated or dropped ones), each
``[name, format_type(atttypid, atttypmod), type oid, value as text or null]``: the text
is the type's output function's, which is what pgoutput sends, so an ``R`` is built
exactly as an insert of the same row would be. ``key`` names the primary key columns,
whose values make the message's deterministic ``Nats-Msg-Id`` (``snapshot_msg_id``): a
snapshot run again with the same id publishes nothing twice.
"""

from __future__ import annotations

import hashlib

# The logical decoding message prefix the bridge reserves for snapshot rows. The config
# refuses it in outbox.message_prefixes (those become outbox events, these change events).
SNAPSHOT_PREFIX = "cdc_bridge.snapshot"
SNAPSHOT_FORMAT_VERSION = 1
SNAPSHOT_ACTION = "R"

# Longer (or unprintable) keys are hashed: a Nats-Msg-Id is a header value.
_MAX_READABLE_KEY = 120


def snapshot_msg_id(snapshot_id: str, table: str, key: tuple[str | None, ...]) -> str:
    """``<snapshot id>:<schema.table>:<key values joined by ','>``, or with the key part a
    SHA-256 (``#<hex>``) when the key is long or holds characters a header cannot carry
    readably (or ',' / ':' which would make two keys read alike)."""
    readable = ",".join("" if value is None else value for value in key)
    if (
        len(readable) > _MAX_READABLE_KEY
        or None in key
        or any(not (" " < ch <= "~") or ch in ",:#" for value in key for ch in value or "")
    ):
        digest = hashlib.sha256()
        for value in key:
            digest.update(b"\x00" if value is None else b"\x01" + value.encode() + b"\x00")
        readable = "#" + digest.hexdigest()[:40]
    return f"{snapshot_id}:{table}:{readable}"


def valid_snapshot_id(snapshot_id: str) -> bool:
    """1-64 characters A-Z, a-z, 0-9, '_', '-', '.': it goes into every Nats-Msg-Id."""
    return 0 < len(snapshot_id) <= 64 and all(
        ch.isascii() and (ch.isalnum() or ch in "_-.") for ch in snapshot_id
    )
