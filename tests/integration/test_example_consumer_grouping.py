"""examples/consumer_grouping.py, run as a user would, against a bridge publishing
transactions: the groups it hands over are the source transactions.

docs/application.md shows the example's grouping code; a test here checks that what it
shows is what this file runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from support.bridge import REPO_ROOT, MakeBridge, start_bridge
from support.outbox import wait_for_ids
from support.transactions import boundaries_config, commit_transactions

EXAMPLE = REPO_ROOT / "examples" / "consumer_grouping.py"
GUIDE = REPO_ROOT / "docs" / "application.md"


def run_example(nats_url: str, stream: str, subject: str, groups: int) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--nats", nats_url, "--stream", stream,
         "--subject", subject, "--groups", str(groups)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_groups_are_the_source_transactions(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    u, stream = unique_name, unique_name.upper()
    start_bridge(make_bridge, boundaries_config(pg_dsn, nats_url, u))
    transactions = commit_transactions(pg_dsn)
    wait_for_ids(nats_url, stream, [row_id for tx in transactions for row_id in tx])

    # Every subject: each transaction ends at its Cdc-Tx-Last.
    groups = run_example(nats_url, stream, f"{u}.>", len(transactions))
    assert [group["ids"] for group in groups] == transactions
    assert all(group["marked"] for group in groups)
    assert len({group["lsn"] for group in groups}) == len(transactions)

    # Tickets only: a transaction whose last event is a dead letter ends where the next
    # transaction's Cdc-Lsn starts; the dead letter that came first is not seen at all.
    tickets = run_example(nats_url, stream, f"{u}.ticket.*", len(transactions))
    assert [group["ids"] for group in tickets] == [
        transactions[0], transactions[1], transactions[2], transactions[3][:2],
        transactions[4][1:], transactions[5],
    ]  # fmt: skip
    assert [group["marked"] for group in tickets] == [True, True, True, False, True, True]
    assert [group["lsn"] for group in tickets] == [group["lsn"] for group in groups]


def test_the_guide_shows_the_example_as_it_runs() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    section = guide[guide.index("## Grouping a transaction on the consumer side") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the section shows no Python code"
    assert match.group(1) in EXAMPLE.read_text(encoding="utf-8")
