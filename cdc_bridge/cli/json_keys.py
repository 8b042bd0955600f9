"""The keys of every ``--json`` output: documented in ``--help`` and docs/operating.md,
asserted by the tests. Scripts may rely on exactly these."""

from __future__ import annotations

# `slots list --json`: an array of objects with these keys.
SLOT_KEYS = (
    "slot_name", "plugin", "database", "active", "active_pid", "restart_lsn",
    "confirmed_flush_lsn", "wal_status", "safe_wal_size", "lag_bytes", "retained_bytes",
)  # fmt: skip
# `slots show --json`: one object, SLOT_KEYS plus these.
SHOW_EXTRA_KEYS = ("walsender", "publication", "failover", "standbys")
# `slots show --json` "standbys" (and /status "standbys"): objects with these keys.
STANDBY_KEYS = (
    "server", "synchronized", "behind_bytes", "temporary", "invalidated", "not_ready", "error",
)  # fmt: skip
# walsender: null when nobody streams; its other fields are null when unknown (not
# reported yet, or hidden: details_visible false without pg_read_all_stats).
WALSENDER_KEYS = (
    "pid", "role", "details_visible", "application_name", "client_addr", "state",
    "sent_lsn", "write_lsn", "flush_lsn", "replay_lsn", "reply_time",
)  # fmt: skip
PUBLICATION_KEYS = ("name", "exists", "tables", "operations")
# `slots create --json`
CREATE_KEYS = ("slot_name", "plugin", "lsn", "failover")
# `slots peek --json`: one object; "changes" holds objects with CHANGE_KEYS.
PEEK_KEYS = (
    "slot_name", "plugin", "publication", "confirmed_flush_lsn", "transactions", "rows",
    "maybe_more", "changes",
)  # fmt: skip
CHANGE_KEYS = (
    "xid", "lsn", "end_lsn", "table", "action", "id", "route", "subject", "note", "data",
)  # fmt: skip
# `slots advance --json`: one object; "changes" as in peek.
ADVANCE_KEYS = (
    "slot_name", "from_lsn", "to_lsn", "advanced", "skipped_transactions", "skipped_rows",
    "maybe_more", "changes",
)  # fmt: skip
# `check --json`: an array of objects.
CHECK_KEYS = ("check", "status", "detail", "fix")
# `init --json`: an array of objects.
STEP_KEYS = ("kind", "name", "action", "detail", "sql", "stream_config")
# `outbox prune --json`: one object; "tables" holds objects with PRUNE_TABLE_KEYS.
PRUNE_KEYS = ("cutoff", "dry_run", "tables", "total_rows")
PRUNE_TABLE_KEYS = ("table", "rows", "batches")
# `snapshot --json`: one object. "rows"/"chunks": written by this run; "resumed_from": the
# rows an earlier run had written (null: a new snapshot); "estimated_rows": counted first.
SNAPSHOT_KEYS = (
    "snapshot_id", "table", "where", "chunk", "estimated_rows", "resumed_from", "rows",
    "chunks", "seconds", "finished",
)  # fmt: skip


def key_list(keys: tuple[str, ...]) -> str:
    return ", ".join(keys)
