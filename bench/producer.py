"""A paced producer: one event per transaction at a fixed rate, for the latency stages.

Autocommit inserts, so ``execute`` returns once COMMIT has: the time taken right then
is the event's commit time. Ids are made here, so no RETURNING round trip is needed to
know which event a commit time belongs to. The loop aims at ``start + i / rate`` for the
i-th event and does not sleep when it is behind, so a slow moment is caught up on
rather than stretching the run.

    python -m bench.producer --dsn DSN --table public.outbox --rate 1000 --seconds 10 \
        --result FILE
"""

from __future__ import annotations

import argparse
import time

import psycopg

from bench.children import write_result
from bench.workload import OUTBOX_TABLE, POLLING_TABLE, single_event, single_insert


def produce(dsn: str, table: str, rate: float, seconds: float) -> dict[str, object]:
    statement = single_insert(table)
    total = int(rate * seconds)
    commits: list[tuple[str, float]] = []
    most_behind = 0.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, single_event(0), prepare=True)  # warm: plan, connection
        started_at = time.time()
        start = time.perf_counter()
        for n in range(total):
            due = start + n / rate
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            else:
                most_behind = max(most_behind, now - due)
            params = single_event(n)
            conn.execute(statement, params, prepare=True)
            commits.append((params[0], time.time()))
        ended_at = time.time()
    return {
        "table": table,
        "events": total,
        "started_at": started_at,
        "ended_at": ended_at,
        "achieved_rate": total / (ended_at - started_at) if ended_at > started_at else 0.0,
        "most_behind_s": most_behind,
        "commits": commits,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.producer", description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", choices=[OUTBOX_TABLE, POLLING_TABLE], required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--result", required=True, help="write the JSON result here")
    args = parser.parse_args()
    write_result(args.result, produce(args.dsn, args.table, args.rate, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
