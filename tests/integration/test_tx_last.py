"""Transaction boundaries on the wire: the last event the bridge publishes of each source
transaction, and only that one, carries ``Cdc-Tx-Last: true``.

Real PostgreSQL, nats-server and bridge (a subprocess), on both output plugins and in
both publishing modes (atomic batches, message by message): the pipeline holds each
event back until the next one, or the Commit, says whether it is the last, whatever the
plugin and the publisher.
"""

from __future__ import annotations

import pytest
from support.bridge import MakeBridge, log_event, start_bridge
from support.nats_helpers import StreamMessage
from support.outbox import wait_for_ids
from support.transactions import boundaries_config, commit_transactions


@pytest.fixture(params=["pgoutput", "wal2json"])
def both_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    plugin: str = request.param
    monkeypatch.setenv("CDC_BRIDGE_TEST_PLUGIN", plugin)  # read by bridge_config
    return plugin


@pytest.mark.usefixtures("both_plugins")
@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "per-message"])
def test_exactly_the_last_event_of_each_transaction_is_marked(
    atomic: bool, pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    u = unique_name
    bridge = start_bridge(make_bridge, boundaries_config(pg_dsn, nats_url, u, atomic=atomic))
    bridge.wait_for_log(log_event("streaming", atomic=atomic))
    transactions = commit_transactions(pg_dsn, stray_last=True)

    every_id = [row_id for tx in transactions for row_id in tx]
    messages = wait_for_ids(nats_url, u.upper(), every_id, timeout=30)
    assert len(messages) == len(every_id)  # nothing twice, nothing else
    by_id = {m.headers["Nats-Msg-Id"]: m for m in messages}
    lsns: set[str] = set()
    for tx in transactions:
        found: list[StreamMessage] = [by_id[row_id] for row_id in tx]
        [lsn] = {m.headers["Cdc-Lsn"] for m in found}  # one transaction, one Cdc-Lsn
        lsns.add(lsn)
        assert [m.headers["Cdc-Index"] for m in found] == [str(i) for i in range(len(tx))]
        marks = [m.headers.get("Cdc-Tx-Last") for m in found]
        assert marks == [None] * (len(tx) - 1) + ["true"], (lsn, marks)
    assert len(lsns) == len(transactions)
    # The dead letters: the router's (no route), last of one transaction and first of
    # another, and the publisher's (no stream for the subject), last of the last one.
    dead_letters = [transactions[3][-1], transactions[4][0], transactions[-1][-1]]
    assert [by_id[row_id].subject for row_id in dead_letters] == [f"{u}.dlq"] * 3
    assert "no route matches" in by_id[transactions[3][-1]].headers["Cdc-Error"]
    assert by_id[transactions[-1][-1]].headers["Cdc-Subject"] == f"other{u}.stray"
