"""`make bench`: cdc-bridge against pg_recvlogical, a plain publish_async relay and a polling relay.

Run with ``python -m bench`` (see bench/README.md). Nothing here is part of ``make test``:
the benchmark measures, it never asserts on speed.
"""
