-- Change events: plain CDC of an ordinary table (cdc-bridge with outbox.change_tables and
-- a route with `payload: change`, e.g. config/changes.yaml). Every insert, update and
-- delete of public.tickets is published as the object wal2json format-version 2 writes:
--
--   {"action":"U","schema":"public","table":"tickets",
--    "columns":[{"name":"id","type":"integer","value":1}, ...],     new row (I, U)
--    "identity":[{"name":"id","type":"integer","value":1}]}         old key (U, D)
--
-- What "identity" holds is the table's REPLICA IDENTITY (docs/configuration.md, "Change
-- events"): DEFAULT gives the primary key, FULL every old column. Without a primary key
-- and without FULL there is no identity: with pgoutput the bridge refuses to start (the
-- publication would make PostgreSQL refuse the table's UPDATEs and DELETEs), with wal2json
-- its updates and deletes are not captured.
--
-- This file creates the table only. In this order (config/changes.yaml's header):
--   psql "$DSN" -f sql/outbox.sql -f sql/changes.sql    the tables, before the bridge
--   cdc-bridge run --config config/changes.yaml         creates the slot; wait for "streaming"
--   psql "$DSN" -f sql/changes_sample.sql               sample changes, published as above
-- A new slot streams only what commits after it was created: changes made before the
-- bridge first streamed are never published.

CREATE TABLE IF NOT EXISTS public.tickets (
    id         integer      PRIMARY KEY,            -- REPLICA IDENTITY DEFAULT: the key
    title      varchar(200) NOT NULL,
    status     text         NOT NULL DEFAULT 'open',
    priority   smallint,
    estimate   numeric(6,2),
    body       text                                 -- long text is TOASTed
);
