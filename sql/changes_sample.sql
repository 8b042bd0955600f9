-- Sample changes of public.tickets (sql/changes.sql creates the table), published by a
-- bridge with it in outbox.change_tables: config/changes.yaml (wal2json's shape),
-- config/debezium.yaml (Debezium's envelope), config/cloudevents.yaml (CloudEvents).
-- Run it once that bridge logs "streaming", not before: a new slot streams only what
-- commits after it was created.
--
--   psql "$DSN" -f sql/changes_sample.sql
--
-- Six messages: five changes of public.tickets and one outbox event. It leaves the table
-- empty, so it can be run again.

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
