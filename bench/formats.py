"""What message formats and payload paths cost: the bridge with each feature on, and without.

One backlog (``events`` in transactions of ``tx_size``), drained in interleaved rounds by
a fresh bridge per variant and round, each on a slot of its own; each variant's figure
is its median round, as for the main drains, and it is compared with the default
config's (``bench/bridge_run.py``) round by round:

- ``default``: the bench's config, plain messages (the body is the payload column);
- ``cloudevents``: the same with ``outbox.format: cloudevents`` (binary mode: the
  attributes as ``ce-*`` headers, default attribute templates);
- ``debezium``: ``payload: debezium`` on every route. Debezium's envelope is for changes
  of ``outbox.change_tables`` only, so this variant drains a change table,
  ``public.bench_changes`` (the outbox's columns and primary key), which gets the very
  same rows in the same transactions, committed after its slots were made (and after the
  outbox backlog, so the other variants' slots hold those changes only after their last
  event, and their publication leaves them out); its publication is ``bench_changes``
  (the outbox and the change table, as the bridge requires);
- ``payload_paths``: the default routes, each reading a payload field, one in ``when``
  (``payload.status: open``), one in the subject (``bench.other.{aggregate_type}.
  {payload.status}``).

Each bridge creates its own stream, as in the main drain (so it runs the bridge's default
publishing mode, atomic batches on this server); every variant must run in the same mode
as the default (the ``streaming`` line says), or the run fails. After each drain the
last stored message must be of the variant's format, the subjects must be the ones its
routes make, and nothing may have gone to the dead-letter subject (``FormatNotUsed``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from nats.aio.client import Client as NatsClient
from psycopg import sql

from bench.bridge_run import STREAM, SUBJECT_PREFIX, BridgeUnderTest, bridge_config
from bench.modes import streaming_mode
from bench.report import (
    FORMAT_CLOUDEVENTS,
    FORMAT_DEBEZIUM,
    FORMAT_DEFAULT,
    FORMAT_PAYLOAD_PATHS,
    FORMAT_VARIANTS,
    FormatGroup,
    Throughput,
)
from bench.stack import PUBLICATION, BenchStack, create_slot, drop_slot
from bench.streams import delete_stream, wait_for_messages
from bench.workload import OUTBOX_TABLE, commit_backlog, table_identifier

CHANGE_TABLE = "public.bench_changes"
CHANGE_PUBLICATION = "bench_changes"
DEAD_LETTER_SUBJECT = f"{SUBJECT_PREFIX}.dlq"

_CHANGE_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS public.bench_changes (LIKE public.outbox INCLUDING ALL);
ALTER TABLE public.bench_changes SET (autovacuum_enabled = false);
"""


@dataclass(frozen=True, slots=True)
class FormatSettings:
    events: int
    tx_size: int
    rounds: int

    @property
    def slots(self) -> int:
        return len(FORMAT_VARIANTS) * self.rounds

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "tx_size": self.tx_size,
            "rounds": self.rounds,
            "variants": list(FORMAT_VARIANTS),
            "change_table": CHANGE_TABLE,
        }


class FormatNotUsed(RuntimeError):
    """A drain did not run the config its row is about."""


def format_config(stack: BenchStack, slot: str, variant: str) -> dict[str, Any]:
    """The bridge's config for ``variant``: the bench's default plus one feature."""
    config = bridge_config(
        dsn=stack.dsn, nats_url=stack.nats.url, slot=slot, publication=PUBLICATION
    )
    config["logging"]["level"] = "info"  # the `streaming` line says the mode
    routes = config["routes"]
    if variant == FORMAT_CLOUDEVENTS:
        config["outbox"]["format"] = "cloudevents"
    elif variant == FORMAT_DEBEZIUM:
        config["postgres"]["publication"] = CHANGE_PUBLICATION
        config["outbox"]["change_tables"] = [CHANGE_TABLE]
        # The same subjects as the default routes, for the change table's rows
        config["routes"] = [
            {
                "name": "tickets",
                "when": {"table": CHANGE_TABLE, "aggregate_type": "ticket"},
                "subject": f"{SUBJECT_PREFIX}.ticket.{{event_type}}",
                "payload": "debezium",
            },
            {
                "name": "other",
                "when": {"table": CHANGE_TABLE},
                "subject": f"{SUBJECT_PREFIX}.other.{{aggregate_type}}",
                "payload": "debezium",
            },
            {"name": "outbox", "subject": f"{SUBJECT_PREFIX}.outbox.{{aggregate_type}}"},
        ]
    elif variant == FORMAT_PAYLOAD_PATHS:
        routes[0]["when"] = {**routes[0]["when"], "payload.status": "open"}
        routes[1]["subject"] = f"{SUBJECT_PREFIX}.other.{{aggregate_type}}.{{payload.status}}"
    elif variant != FORMAT_DEFAULT:
        raise ValueError(f"unknown variant {variant}")
    return config


def _slot(variant: str, round_no: int) -> str:
    return f"bench_fmt_{variant}_{round_no}"


def _timeout(events: int) -> float:
    return 60.0 + events / 1000


def _prepare_change_table(dsn: str) -> None:
    """The change table and its publication, before any slot of the stage: a slot decodes
    with the catalog of its WAL position, and must find the publication there."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_CHANGE_TABLE_SQL.encode())
        exists = conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (CHANGE_PUBLICATION,)
        ).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL(
                    "CREATE PUBLICATION {} FOR TABLE {}, {} "
                    "WITH (publish = 'insert, update, delete')"
                ).format(
                    sql.Identifier(CHANGE_PUBLICATION),
                    table_identifier(OUTBOX_TABLE),
                    table_identifier(CHANGE_TABLE),
                )
            )


async def _api(nc: NatsClient, subject: str, request: dict[str, object]) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(request).encode(), timeout=5)
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        raise RuntimeError(f"{subject}: {answer['error'].get('description')}")
    return answer


async def _subject_counts(nc: NatsClient) -> dict[str, int]:
    info = await _api(nc, f"$JS.API.STREAM.INFO.{STREAM}", {"subjects_filter": ">"})
    return {name: int(n) for name, n in (info["state"].get("subjects") or {}).items()}


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", errors="replace").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


async def _last_message(nc: NatsClient) -> tuple[str, dict[str, str], bytes]:
    answer = await _api(
        nc, f"$JS.API.STREAM.MSG.GET.{STREAM}", {"last_by_subj": f"{SUBJECT_PREFIX}.>"}
    )
    message = answer["message"]
    hdrs = base64.b64decode(message["hdrs"]) if message.get("hdrs") else b""
    data = base64.b64decode(message["data"]) if message.get("data") else b""
    return str(message["subject"]), _parse_headers(hdrs), data


def _check_message(variant: str, headers: dict[str, str], body: bytes) -> str | None:
    """What is wrong with a stored message of ``variant``; None if it is that format."""
    try:
        document = json.loads(body)
    except ValueError:
        return f"its body is not JSON: {body[:80]!r}"
    cloudevent = headers.get("ce-specversion") == "1.0" and "ce-type" in headers
    if variant == FORMAT_CLOUDEVENTS:
        if not cloudevent:
            return f"no ce-specversion/ce-type headers: {sorted(headers)}"
    elif cloudevent:
        return "it is a CloudEvent"
    debezium = isinstance(document, dict) and document.get("op") == "c" and "source" in document
    if variant == FORMAT_DEBEZIUM:
        if not debezium or document["source"].get("table") != CHANGE_TABLE.split(".")[1]:
            return f"not a Debezium create of {CHANGE_TABLE}: {body[:120]!r}"
    elif debezium or not (isinstance(document, dict) and "n" in document):
        return f"the body is not the outbox payload: {body[:120]!r}"
    return None


def _check_subjects(variant: str, counts: dict[str, int], events: int) -> str | None:
    dead = counts.get(DEAD_LETTER_SUBJECT, 0)
    if dead:
        return f"{dead} dead letters"
    tickets = sum(n for name, n in counts.items() if name.startswith(f"{SUBJECT_PREFIX}.ticket."))
    other = {name: n for name, n in counts.items() if name.startswith(f"{SUBJECT_PREFIX}.other.")}
    # The backlog's rows alternate: even numbers are tickets (bench/workload.py)
    if tickets != events // 2 or sum(other.values()) != events - events // 2:
        return f"{tickets} tickets and {sum(other.values())} others: {counts}"
    if variant == FORMAT_PAYLOAD_PATHS:
        wrong = [name for name in other if not name.endswith(".open")]
        if wrong:
            return f"subjects without the payload's status: {wrong}"
    return None


async def _drain_variant(
    nc: NatsClient, stack: BenchStack, settings: FormatSettings, variant: str, slot: str
) -> tuple[Throughput, float | None, bool | None]:
    work_dir = stack.work_dir("formats")
    bridge = BridgeUnderTest(format_config(stack, slot, variant), work_dir, slot)
    bridge.start()
    try:
        timeout = _timeout(settings.events)
        # The CPU once the first events are stored, to leave start-up out: the same for
        # every variant, it is a good part of a 20,000-event drain's CPU
        first = await wait_for_messages(nc, STREAM, 1, timeout, bridge.check_alive)
        cpu_first = bridge.cpu_use()
        state = await wait_for_messages(nc, STREAM, settings.events, timeout, bridge.check_alive)
        cpu = bridge.cpu_use()
        assert state.first_ts is not None and state.last_ts is not None
        drained = Throughput(
            settings.events, state.last_ts - bridge.spawned_at, state.last_ts - state.first_ts, cpu
        )
        steady_cpu: float | None = None
        # Polled every 50 ms: with most of the backlog stored by the first look, what is
        # left is too little to time
        if cpu is not None and cpu_first is not None and first.messages <= settings.events // 2:
            used = cpu.on_cpu_seconds - cpu_first.on_cpu_seconds
            if used > 0:
                steady_cpu = (settings.events - first.messages) / used
    finally:
        code = bridge.stop()
    if code != 0:
        raise RuntimeError(f"the bridge exited with code {code}; log {bridge.log_path}")
    subject, headers, body = await _last_message(nc)
    problem = _check_message(variant, headers, body) or _check_subjects(
        variant, await _subject_counts(nc), settings.events
    )
    if problem is not None:
        raise FormatNotUsed(f"{slot}: not a {variant} drain ({subject}): {problem}")
    await delete_stream(nc, STREAM)
    return drained, steady_cpu, streaming_mode(bridge.log_path)


async def run_formats(
    nc: NatsClient, stack: BenchStack, settings: FormatSettings, say: Callable[[str], None]
) -> FormatGroup:
    _prepare_change_table(stack.dsn)
    outbox_variants = [v for v in FORMAT_VARIANTS if v != FORMAT_DEBEZIUM]
    for round_no in range(1, settings.rounds + 1):
        for variant in outbox_variants:
            create_slot(stack.dsn, _slot(variant, round_no))
    say(f"formats: committing {settings.events} events in transactions of {settings.tx_size}")
    commit_backlog(stack.dsn, OUTBOX_TABLE, settings.events, settings.tx_size)
    # The Debezium drains' slots start after the outbox backlog, so they hold the change
    # table's rows only
    for round_no in range(1, settings.rounds + 1):
        create_slot(stack.dsn, _slot(FORMAT_DEBEZIUM, round_no))
    commit_backlog(stack.dsn, CHANGE_TABLE, settings.events, settings.tx_size)
    rounds: dict[str, list[Throughput]] = {variant: [] for variant in FORMAT_VARIANTS}
    steady: dict[str, list[float | None]] = {variant: [] for variant in FORMAT_VARIANTS}
    atomic: dict[str, bool | None] = {}
    for round_no in range(1, settings.rounds + 1):
        for variant in FORMAT_VARIANTS:
            slot = _slot(variant, round_no)
            drained, steady_cpu, ran_atomic = await _drain_variant(
                nc, stack, settings, variant, slot
            )
            drop_slot(stack.dsn, slot)
            atomic.setdefault(variant, ran_atomic)
            if ran_atomic is None or ran_atomic is not atomic[FORMAT_DEFAULT]:
                raise FormatNotUsed(
                    f"{slot}: streamed with atomic={ran_atomic}, the default config with "
                    f"atomic={atomic[FORMAT_DEFAULT]}"
                )
            say(
                f"formats: round {round_no}/{settings.rounds}, {variant}: "
                f"{drained.events_per_second:,.0f} events/s, "
                f"{drained.events_per_cpu_second or 0:,.0f} per CPU-s, "
                f"{steady_cpu or 0:,.0f} once started"
            )
            rounds[variant].append(drained)
            steady[variant].append(steady_cpu)
    return FormatGroup(
        events=settings.events,
        tx_size=settings.tx_size,
        atomic=bool(atomic[FORMAT_DEFAULT]),
        rounds={variant: tuple(values) for variant, values in rounds.items()},
        steady_cpu={variant: tuple(values) for variant, values in steady.items()},
    )
