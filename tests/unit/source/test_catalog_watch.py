"""What a running session's catalog watch calls a change (source/catalog_watch.py)."""

from __future__ import annotations

from cdc_bridge.source.catalog_watch import CatalogIdentity, identity_change

STARTED = CatalogIdentity(16400, (("public.outbox", 16390), ("public.tickets", 16395)))


def test_the_same_identities_are_no_change() -> None:
    assert identity_change(STARTED, STARTED, "pub") is None


def test_a_publication_dropped_or_created_again() -> None:
    gone = CatalogIdentity(None, STARTED.tables)
    assert identity_change(STARTED, gone, "pub") == "publication pub was dropped"
    again = CatalogIdentity(16500, STARTED.tables)
    assert identity_change(STARTED, again, "pub") == "publication pub was dropped and created again"


def test_a_table_dropped_or_created_again() -> None:
    gone = CatalogIdentity(16400, (("public.outbox", 16390), ("public.tickets", None)))
    assert identity_change(STARTED, gone, "pub") == "table public.tickets was dropped"
    again = CatalogIdentity(16400, (("public.outbox", 16600), ("public.tickets", 16395)))
    assert identity_change(STARTED, again, "pub") == (
        "table public.outbox was dropped and created again"
    )


def test_what_was_missing_at_the_start_is_for_the_start_up_checks() -> None:
    started = CatalogIdentity(None, (("public.outbox", None),))
    now = CatalogIdentity(16400, (("public.outbox", 16390),))
    assert identity_change(started, now, "pub") is None
