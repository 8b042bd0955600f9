"""What the hostile-row tests share (tests/integration/test_hostile_rows.py and
tests/chaos/test_chaos_hostile_rows.py): the server limit they run under, and every
header name a stored message may carry."""

from __future__ import annotations

MAX_PAYLOAD = 128 * 1024  # above the 64 KB header block, so that limit can be reached

# What a stored message may carry, by name: a row's own, a dead letter's, the order
# guard's expectations, JetStream's bookkeeping of atomic batches (atomic mode), and
# X-Ok of the row whose headers column forges the bridge's.
ALLOWED_HEADERS = {
    "Nats-Msg-Id", "Cdc-Lsn", "Cdc-Index", "Cdc-Table", "Cdc-Source", "Cdc-Tx-Last",
    "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit",
    "Cdc-Error", "Cdc-Subject", "Cdc-Body-Dropped", "X-Ok",
    "Nats-Expected-Last-Sequence", "Nats-Expected-Last-Msg-Id",
    "Nats-Expected-Last-Subject-Sequence", "Nats-Expected-Last-Subject-Sequence-Subject",
}  # fmt: skip
