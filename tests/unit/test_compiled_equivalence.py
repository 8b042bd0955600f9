"""The mypyc-compiled hot path and its pure .py sources give byte-identical results.

The captured pgoutput and wal2json fixtures go through the decoders, three routers (plain
with headers, CloudEvents, Debezium) and the HPUB frame builder, once in a child process
that runs compiled and once in one with CDC_BRIDGE_PURE=1; every change, outcome, error
and frame byte goes into one transcript, and the two must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from nats.aio.client import Client as NatsClient
from support import paths

from cdc_bridge.config.load import parse_config
from cdc_bridge.core.changes import Change, EventPosition, Insert, RowChange
from cdc_bridge.core.headers import header_lines
from cdc_bridge.routing.change_events import TypeNames
from cdc_bridge.routing.router import Outbound, Poison, Router
from cdc_bridge.sink.ack_book import NO_REPLY
from cdc_bridge.sink.wire import Frames, header_block
from cdc_bridge.source.decoding import DecodeError, Decoder
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder
from cdc_bridge.source.decoding.wal2json import Wal2jsonDecoder

CHANGE_TABLES = frozenset({"public.tickets", "public.audited", "app.tagged"})
HEAD = """\
postgres: {dsn: "postgresql://app@127.0.0.1/shop"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>", "cdc.>"]}
dead_letter: {subject: events.dlq}
outbox: {change_tables: [public.tickets, public.audited, app.tagged]}
routes:
"""
ROUTES = {
    "plain": '  - subject: "events.{aggregate_type}.{event_type}"\n'
    '    headers: {X-Aggregate: "{aggregate_id}"}\n',
    "cloudevents": '  - subject: "events.{event_type}"\n    format: cloudevents\n',
    "debezium": '  - subject: "cdc.tickets"\n    payload: debezium\n',
}
AT = EventPosition(lsn=0x16B3748, lsn_text="0/16B3748", index=2, commit_time=849_480_033, xid=7)


def _decoded(decoder: Decoder, messages: list[bytes], out: list[str]) -> list[Change]:
    changes: list[Change] = []
    for message in messages:
        try:
            change = decoder.decode(message)
        except DecodeError as exc:
            out.append(f"DecodeError {exc}")
            continue
        out.append(repr(change))
        if change is not None:
            changes.append(change)
    return changes


def _published(outcome: Outbound | Poison, frames: Frames, token: int, out: list[str]) -> None:
    if isinstance(outcome, Poison):
        out.append(repr(outcome))
        return
    data, more = outcome.data, ""
    if outcome.event is not None:
        data, more = outcome.event.finish(AT)
    lines = f"{header_lines(outcome.headers)}Nats-Msg-Id: {outcome.msg_id}\r\n"
    out.append(repr((outcome.subject, outcome.route, outcome.dead_letter_reason, data, more)))
    block = header_block(lines + more, "")
    frames.add(outcome.subject, token, block, data, len(block), len(block) + len(data))
    size = len((lines + more).encode())
    frames.add_lines(outcome.subject, NO_REPLY, lines, more, size, data)
    frames.ask_reply_of_last_unreplied(outcome.subject, token + 1)


def transcript() -> str:
    """Everything the hot path makes of the fixtures, as text."""
    from cdc_bridge import build

    out = [build()]
    folder = paths.FIXTURES / "change_events"
    triples = (folder / "type_names.json").read_text()
    names = TypeNames({(oid, typmod): name for oid, typmod, name in json.loads(triples)})
    changes = _decoded(
        PgoutputDecoder(CHANGE_TABLES, names),
        [bytes.fromhex(line) for line in (folder / "pgoutput.hex").read_text().split()],
        out,
    )
    changes += _decoded(
        PgoutputDecoder(),
        [path.read_bytes() for path in sorted((paths.FIXTURES / "pgoutput").glob("*.bin"))],
        out,
    )
    wal2json = [folder / "wal2json.jsonl", *sorted((paths.FIXTURES / "wal2json").glob("*.jsonl"))]
    for path in wal2json:
        changes += _decoded(Wal2jsonDecoder(CHANGE_TABLES), path.read_bytes().splitlines(), out)
    routers = {name: Router(parse_config(HEAD + routes, env={})) for name, routes in ROUTES.items()}
    frames = Frames(NatsClient(), "_INBOX.equivalence")
    for index, change in enumerate(changes):
        for name, router in routers.items():
            try:
                if type(change) is Insert:
                    outcome = router.route(change.table, change.row)
                elif type(change) is RowChange:
                    outcome = router.route_change(change, f"0/16B3748-{index}")
                else:
                    continue
            except Exception as exc:  # the same refusal both ways is equivalent too
                out.append(f"{name}: {type(exc).__name__} {exc}")
                continue
            _published(outcome, frames, index, out)
    out.append(repr(b"".join(frames.parts)))
    return "\n".join(out)


def _transcript_of_child(pure: bool) -> str:
    env = {**os.environ, "CDC_BRIDGE_PURE": "1" if pure else "0"}
    tests = str(paths.REPO / "tests")
    code = (
        f"import sys; sys.path[:0] = [{tests!r}, {tests + '/unit'!r}]; "
        "import test_compiled_equivalence as t; sys.stdout.write(t.transcript())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_compiled_and_pure_modules_make_the_same_bytes() -> None:
    compiled = _transcript_of_child(pure=False)
    pure = _transcript_of_child(pure=True)
    assert pure.startswith("pure Python\n")
    if not compiled.startswith("compiled"):
        pytest.skip("the hot path is not compiled here (no C compiler, or not built)")
    assert len(compiled.splitlines()) > 100  # the fixtures were all read
    assert compiled.split("\n", 1)[1] == pure.split("\n", 1)[1]
