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
-- Run it with: psql "$DSN" -f sql/changes.sql   (sql/outbox.sql first, for the outbox)

CREATE TABLE IF NOT EXISTS public.tickets (
    id         integer      PRIMARY KEY,            -- REPLICA IDENTITY DEFAULT: the key
    title      varchar(200) NOT NULL,
    status     text         NOT NULL DEFAULT 'open',
    priority   smallint,
    estimate   numeric(6,2),
    body       text                                 -- long text is TOASTed
);

-- The workload: start the bridge first (a new slot only sees later commits).

-- I: "columns" is the new row; no "identity".
-- (The body is 8 KB that does not compress: PostgreSQL stores it out of line.)
INSERT INTO public.tickets (id, title, priority, estimate, body)
VALUES (1, 'Printer jam', 2, 1.50,
        (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 250) AS g));

-- A change and an outbox event in one transaction: both published, in commit order.
BEGIN;
UPDATE public.tickets SET status = 'in_progress' WHERE id = 1;
INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload)
VALUES (gen_random_uuid(), 'ticket', '1', 'assigned', '{"to": "alice"}');
COMMIT;
-- U: "identity" is [{"name":"id",...,"value":1}]. "body" is missing from "columns"
-- when its TOASTed value was stored out of line and the update did not touch it: the
-- server does not send an unchanged out-of-line value, so neither plugin has it.

-- U with a new key: "identity" holds the old one.
UPDATE public.tickets SET id = 2 WHERE id = 1;

-- REPLICA IDENTITY FULL: "identity" becomes the whole old row (NULLs and long values
-- included). It costs WAL on every update and delete.
ALTER TABLE public.tickets REPLICA IDENTITY FULL;
UPDATE public.tickets SET status = 'closed' WHERE id = 2;

-- D: no "columns"; "identity" is the old row (FULL) or the old key (DEFAULT). Routed to
-- the ticket_deleted route of config/changes.yaml by `when: {action: D}`.
DELETE FROM public.tickets WHERE id = 2;

-- Back to the default (the primary key).
ALTER TABLE public.tickets REPLICA IDENTITY DEFAULT;

-- Deleting outbox rows (a cleanup job) publishes nothing.
DELETE FROM public.outbox WHERE created_at < now() - interval '7 days';
