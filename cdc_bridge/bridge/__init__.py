"""The only wiring: the pipeline (source -> routing -> sink), one session, the
supervisor (leadership, reconnects), failure classes, HTTP, status, metrics, logs."""
