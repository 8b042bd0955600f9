"""How failures are classified: fatal (say it once, exit) or transient (retry)."""

from __future__ import annotations

import nats.errors
import psycopg

from cdc_bridge.sink.publisher import PublishError
from cdc_bridge.source.replication import ReplicationError

# Failures a retry can cure: servers down or restarting, connections cut, acks lost.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    ReplicationError,
    PublishError,
    nats.errors.Error,
    OSError,
    TimeoutError,
)
