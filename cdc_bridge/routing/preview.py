"""What the bridge would publish for one row, without PostgreSQL or NATS.

Backs ``cdc-bridge routes test``: the row is given as a JSON object, turned into the
text values the decoder would deliver, and run through the same Router the daemon
uses. Pure: the CLI does the reading and printing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from cdc_bridge.config.model import BridgeConfig, DeadLetterConfig
from cdc_bridge.core.changes import ColumnValue, EventPosition
from cdc_bridge.core.headers import parse_header_lines
from cdc_bridge.routing.router import DEAD_LETTER_ROUTE, Outbound, Router

Outcome = Literal["routed", "dead_letter", "poison"]

# The default max_payload of nats-server (1 MiB); the daemon uses the server's own.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
# A dead letter subject for asking the router what it would have rendered when the
# config has none; never shown as a destination.
_STAND_IN_DEAD_LETTER = "cdc-bridge.preview.dead-letter"
# Where a previewed CloudEvent sits: a row has no WAL position until it commits.
_PREVIEW_POSITION = EventPosition(lsn=0, lsn_text="0/0", index=0, commit_time=0, xid=0)


@dataclass(frozen=True, slots=True)
class RoutePreview:
    outcome: Outcome
    route: str | None  # the matching route's name; "dead_letter"; None for poison
    subject: str | None  # where it would be published; None for poison
    intended_subject: str | None  # the route's rendered subject, when not routed
    msg_id: str | None  # Nats-Msg-Id; None for a poison row without an id
    headers: dict[str, str]  # every header the router sets, Nats-Msg-Id included
    payload: bytes | None  # None for poison
    reason: str | None  # why it was not routed

    def as_json(self) -> dict[str, object]:
        """A stable object: the same keys for every outcome, null where not applicable."""
        text = _utf8_or_none(self.payload)
        if self.payload is None:
            encoding, shown = None, None
        elif text is not None:
            encoding, shown = "utf-8", text
        else:
            encoding, shown = "base64", base64.b64encode(self.payload).decode("ascii")
        return {
            "outcome": self.outcome,
            "route": self.route,
            "subject": self.subject,
            "intended_subject": self.intended_subject,
            "msg_id": self.msg_id,
            "headers": self.headers,
            "payload": shown,
            "payload_encoding": encoding,
            "payload_bytes": None if self.payload is None else len(self.payload),
            "reason": self.reason,
        }

    def lines(self) -> list[str]:
        """The preview for people."""
        if self.outcome == "poison":
            lines = [
                f"poison row ({_id_words(self.msg_id)}): {self.reason}",
                "no dead_letter is configured: the bridge would stop at this row and not "
                "confirm past it",
            ]
            if self.intended_subject is not None:
                lines.append(f"intended subject: {self.intended_subject}")
            return lines
        lines = []
        if self.outcome == "dead_letter":
            lines.append(f"dead letter: {self.reason}")
        lines += [f"route:    {self.route}", f"subject:  {self.subject}"]
        if self.intended_subject is not None:
            lines.append(f"intended: {self.intended_subject}")
        lines.append("headers:")
        lines += [f"  {name}: {value}" for name, value in self.headers.items()]
        assert self.payload is not None
        text = _utf8_or_none(self.payload)
        if not self.payload:
            lines.append("payload: (empty)")
        elif text is None:
            encoded = base64.b64encode(self.payload).decode("ascii")
            lines += [f"payload ({len(self.payload)} bytes, base64):", f"  {encoded}"]
        else:
            lines += [f"payload ({len(self.payload)} bytes):", f"  {text}"]
        return lines


def preview_row(
    config: BridgeConfig,
    table: str,
    row: Mapping[str, ColumnValue],
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> RoutePreview:
    """Route ``row`` as the daemon would, with a server whose limit is ``max_payload``."""
    outcome = Router(config, max_payload=max_payload).route(table, row)
    if isinstance(outcome, Outbound):
        return _from_outbound(outcome)
    # No dead_letter: ask a router with a stand-in one what the subject would have been.
    dead_letter = DeadLetterConfig(subject=_STAND_IN_DEAD_LETTER)
    stand_in = config.model_copy(update={"dead_letter": dead_letter})
    shadow = Router(stand_in, max_payload=max_payload).route(table, row)
    intended = shadow.headers.get("Cdc-Subject") if isinstance(shadow, Outbound) else None
    return RoutePreview(
        outcome="poison",
        route=None,
        subject=None,
        intended_subject=intended,
        msg_id=outcome.row_id,
        headers={},
        payload=None,
        reason=outcome.reason,
    )


def _from_outbound(outbound: Outbound) -> RoutePreview:
    dead = outbound.route == DEAD_LETTER_ROUTE
    data, headers = outbound.data, outbound.headers
    if outbound.event is not None:  # a CloudEvent: as the pipeline would finish it
        data, lines = outbound.event.finish(_PREVIEW_POSITION)
        headers = {**headers, **parse_header_lines(lines)}
    return RoutePreview(
        outcome="dead_letter" if dead else "routed",
        route=outbound.route,
        subject=outbound.subject,
        intended_subject=outbound.headers.get("Cdc-Subject") if dead else None,
        msg_id=outbound.msg_id,
        # The publisher adds the id header; show it with the others.
        headers={**headers, "Nats-Msg-Id": outbound.msg_id},
        payload=data,
        reason=outbound.dead_letter_reason,
    )


def resolve_table(config: BridgeConfig, table: str | None) -> str:
    """``--table`` as the decoder names tables (``schema.table``); the first outbox
    table when not given. ValueError for a table the bridge does not read."""
    if table is None:
        return config.outbox.tables[0]
    qualified = table if "." in table else f"public.{table}"
    if qualified not in config.outbox.tables:
        raise ValueError(
            f"--table: the bridge reads only {', '.join(config.outbox.tables)} "
            f"(outbox.table), not {qualified}"
        )
    return qualified


def row_from_json(text: str) -> dict[str, ColumnValue]:
    """``--row``: a JSON object of column -> value, as the decoder would deliver it.

    Strings are the column's text, null is SQL NULL, and anything else becomes the
    text PostgreSQL would send for it: numbers as written (``1e3`` -> ``1000``),
    booleans as ``true``/``false`` (a jsonb value; pass "t"/"f" for a boolean
    column), objects and arrays in jsonb's output form. ValueError (one line) when
    the text is not such an object.
    """
    try:
        parsed = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"--row: invalid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError(
            '--row: expected a JSON object of column: value, like {"event_type": "created"}'
        )
    return {column: column_text(value) for column, value in parsed.items()}


def column_text(value: object) -> str | None:
    """One parsed JSON value -> the column's text form (None for null)."""
    if value is None or isinstance(value, str):
        return value
    return _jsonb_text(value)


def _jsonb_text(value: object) -> str:
    # jsonb's output: ", " and ": " separators, object keys ordered shorter first and
    # then bytewise (its storage order), numbers as PostgreSQL's numeric prints them.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value.copy_abs() if value.is_zero() else value, "f")  # no "-0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_jsonb_text(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        items = (
            f"{json.dumps(key, ensure_ascii=False)}: {_jsonb_text(value[key])}" for key in keys
        )
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _id_words(row_id: str | None) -> str:
    return "NULL id" if row_id is None else f"id {row_id}"


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _utf8_or_none(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
