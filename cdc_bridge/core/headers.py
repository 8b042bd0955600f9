"""Message headers: which names belong to the bridge or to JetStream, and their text form.

Pure, and free of the daemon's dependencies: the application library (outbox.py) checks
names with it too.
"""

from __future__ import annotations

import re

# Set by the pipeline on every message; a same-named header from a row is left out.
BRIDGE_HEADERS = ("Nats-Msg-Id", "Cdc-Lsn", "Cdc-Index", "Cdc-Table", "Cdc-Source")
# Set by the pipeline on the last event it publishes of each source transaction (across
# every subject), so a consumer knows where a transaction ends without waiting for the
# next one. Not on what `outbox replay` publishes (no transaction position is known).
TX_LAST_HEADER = "Cdc-Tx-Last"
# Set by the order guard (ordering.py) on messages to the bridge's own stream.
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
# Set on what `cdc-bridge outbox replay` publishes: a retained row published again, out
# of its commit position, with no Cdc-Lsn / Cdc-Index (that position is not known).
REPLAY_HEADER = "Cdc-Replay"
# On dead letters: why, where the message was meant to go, and (when the body had to be
# left out to fit) how large it was.
DEAD_LETTER_ERROR = "Cdc-Error"
DEAD_LETTER_SUBJECT = "Cdc-Subject"
BODY_DROPPED = "Cdc-Body-Dropped"
# Every header name the bridge sets, lower-cased: a row's headers column may not set
# them in any spelling (they would sit beside the bridge's own and be taken for them).
RESERVED_NAMES = frozenset(
    name.lower()
    for name in (
        *BRIDGE_HEADERS,
        TX_LAST_HEADER,
        REPLAY_HEADER,
        DEAD_LETTER_ERROR,
        DEAD_LETTER_SUBJECT,
        BODY_DROPPED,
    )
)
# JetStream 2.11+: the last message on subjects matching the filter has this sequence.
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"


# What a header name may be: printable ASCII except ':' (config and headers column alike).
HEADER_NAME = re.compile(r"[!-9;-~]+")


def controls_jetstream(name: str) -> bool:
    """Nats-* headers are JetStream's: dedup ids, expectations, rollups, TTLs... A row or
    a route that sets one would have it refused on every replay, or obeyed."""
    return name.lower().startswith("nats-")


def reserved_by_bridge(name: str) -> bool:
    return name.lower() in RESERVED_NAMES


def header_lines(headers: dict[str, str]) -> str:
    """Headers as the lines of a NATS/1.0 header block. Names and values were checked
    where they were made (config, router, by core/wire_text.py's rules); none holds CR
    or LF, so nothing needs escaping here."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers.items()])


def parse_header_lines(lines: str) -> dict[str, str]:
    """``header_lines`` back to a dict."""
    headers: dict[str, str] = {}
    for line in lines.split("\r\n"):
        if line:
            name, _, value = line.partition(": ")
            headers[name] = value
    return headers
