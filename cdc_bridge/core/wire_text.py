"""What may reach the NATS wire (pure): one set of rules for every text the bridge frames.

A message goes out as an HPUB control line (subject, reply, sizes), then a header block
of ``Name: value\\r\\n`` lines ended by a blank line. A CR or LF inside a value ends its
line early: what follows becomes headers of the row's choosing (an injected
``Nats-Expected-Last-Sequence`` stops a bridge for good) or ends the block. A lone
surrogate (JSON's ``"\\ud800"`` in a json column or a logical message) cannot be encoded
as UTF-8 at all. The server closes the connection on a control line over its
``max_control_line`` and refuses for good a header block over 64 KB.

So every value that is framed (ids, subjects, header values) is checked against these
rules where the router makes it, with a reason that names the row's value, and the
publisher checks the frame once more (``frame_problem``) before it writes.
"""

from __future__ import annotations

import hashlib
import re

# C0 controls except TAB, DEL, and lone surrogates: what no header value, id or subject
# token may hold. (TAB is legal in a header value, as in HTTP.)
UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
# Only the lone surrogates: for text that is escaped anyway (CloudEvents attributes).
UNENCODABLE_TEXT = re.compile(r"[\ud800-\udfff]")
SENDABLE_TEXT_RULE = "control characters (CR, LF, NUL...) or lone surrogates"
TEXT_RULE = f"{SENDABLE_TEXT_RULE} cannot be sent"

# nats-server refuses a header block longer than this for good (err_code 10097).
MAX_HEADER_BLOCK = 65535
# The server's max_control_line when its INFO does not say (nats-server's default).
DEFAULT_MAX_CONTROL_LINE = 4096
# What an HPUB line holds besides the subject: "HPUB ", the reply subject (inbox and
# token), the two sizes, the spaces and CRLF. Generous, so a custom inbox prefix fits.
_CONTROL_LINE_OVERHEAD = 256
# Longer ids are refused: the order guard repeats the previous id in the next message's
# Nats-Expected-Last-Msg-Id, and both must fit one header block with everything else.
MAX_ID_BYTES = 4096

_SHOWN_LIMIT = 60
UNSENDABLE_ID_PREFIX = "unsendable-id:"


def subject_limit(max_control_line: int = DEFAULT_MAX_CONTROL_LINE) -> int:
    """The longest subject (bytes) an HPUB line under ``max_control_line`` can carry."""
    return max_control_line - _CONTROL_LINE_OVERHEAD


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate counted as UTF-8 would write it)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def shown(value: str, limit: int = _SHOWN_LIMIT) -> str:
    """``value`` quoted for a reason or a log line: clipped, with control characters
    and surrogates written as escapes (``'a\\r\\nb'``), so the line stays one line and
    can always be printed."""
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return "'" + UNSAFE_TEXT.sub(_escape, value.replace("\\", "\\\\")) + "'"


def _escape(found: re.Match[str]) -> str:
    return ascii(found.group())[1:-1]


def printable(text: str) -> str:
    """``text`` (a reason, say) with control characters and surrogates escaped."""
    return UNSAFE_TEXT.sub(_escape, text)


def id_problem(msg_id: str) -> str | None:
    """Why ``msg_id`` cannot be a Nats-Msg-Id, or None."""
    if msg_id.isascii() and msg_id.isprintable():
        size = len(msg_id)  # the usual id, checked per event: no search needed
    elif UNSAFE_TEXT.search(msg_id):
        return f"id {shown(msg_id)} cannot be sent as Nats-Msg-Id: {TEXT_RULE}"
    else:
        size = utf8_size(msg_id)
    if size > MAX_ID_BYTES:
        return f"id of {size} bytes is longer than the {MAX_ID_BYTES} bytes allowed"
    return None


def sendable_id(msg_id: str) -> str:
    """``msg_id``, or for one that cannot be sent a deterministic stand-in (so replays of
    its dead letter still deduplicate)."""
    if id_problem(msg_id) is None:
        return msg_id
    digest = hashlib.sha256(msg_id.encode("utf-8", "surrogatepass")).hexdigest()
    return UNSENDABLE_ID_PREFIX + digest[:32]


def subject_problem(subject: str, limit: int) -> str | None:
    """Why ``subject`` cannot go in an HPUB line, or None (its tokens were checked
    where they were rendered)."""
    if len(subject) * 4 <= limit:
        return None  # the common case: no UTF-8 text this short can be too long
    size = utf8_size(subject)
    if size > limit:
        return (
            f"subject of {size} bytes is longer than the {limit} bytes the server's "
            "control line leaves for it"
        )
    return None


def frame_problem(
    subject: str, block_size: int, size: int, max_payload: int, subject_max: int
) -> str | None:
    """The last check of a finished frame (header block of ``block_size`` bytes, ``size``
    with the data): what the server would refuse for good or close the connection on,
    or None."""
    if block_size > MAX_HEADER_BLOCK:
        return f"header block of {block_size} bytes exceeds the server's {MAX_HEADER_BLOCK}"
    if size > max_payload:
        return (
            f"message of {size} bytes with headers exceeds the server's max_payload {max_payload}"
        )
    if not subject.isascii() and UNENCODABLE_TEXT.search(subject):
        return f"subject {shown(subject)} is not valid Unicode text"
    return subject_problem(subject, subject_max)
