"""Values every stage shares: LSNs, changes, the LSN tracker, templates, subjects,
headers, redaction, TLS, durations, the fatal-error base. Pure: imports no I/O."""
