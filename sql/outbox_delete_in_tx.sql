-- Outbox housekeeping, option (a): the outbox table stays empty.
--
-- The bridge reads events from the WAL, not from the table. An insert is in the WAL the
-- moment it is written, with the whole row, so the row can be deleted again before the
-- transaction commits: the event still arrives (when, and only if, the transaction
-- commits), and the table never grows. The delete is not an event: the bridge's
-- publication carries inserts only (publish = 'insert'; with wal2json it asks for
-- inserts only), and the bridge ignores anything else.
--
-- Two ways to do it. Pick one; both are safe with the bridge running or stopped.
-- (The other option is a retention job: `cdc-bridge outbox prune`, or sql/prune.sql.)
--
-- Run as it is, with psql "$DSN" -f sql/outbox_delete_in_tx.sql, it installs the trigger
-- of (1) and then runs the example transaction of (2).

-- 1. Automatically, for every insert: a trigger deletes the rows each INSERT statement
--    wrote, in the same transaction. Applications keep writing events as before
--    (cdc_bridge.outbox.emit, or plain INSERTs). One DELETE per statement, so a
--    multi-row insert costs one delete, not one per row.
CREATE OR REPLACE FUNCTION public.outbox_delete_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM public.outbox AS o USING inserted AS i WHERE o.id = i.id;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_delete_inserted ON public.outbox;
CREATE TRIGGER outbox_delete_inserted
    AFTER INSERT ON public.outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_delete_inserted();

-- To keep rows again (e.g. to look at recent events while debugging):
--   DROP TRIGGER outbox_delete_inserted ON public.outbox;

-- 2. By hand, in the application's transaction: insert the event, then delete it.
--    From Python, with the id emit() returns:
--        event_id = emit(conn, aggregate_type="ticket", aggregate_id=ticket_id, ...)
--        conn.execute("DELETE FROM public.outbox WHERE id = %s", (event_id,))
--    In SQL, RETURNING gives the application the id the same way (here psql's \gset
--    keeps it in the variable event_id):
CREATE TABLE IF NOT EXISTS public.tickets (
    id    text PRIMARY KEY,
    title text NOT NULL
);

BEGIN;
INSERT INTO public.tickets (id, title) VALUES ('T-1', 'Printer on fire')
    ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title;
INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload)
    VALUES ('ticket', 'T-1', 'created', '{"id": "T-1", "title": "Printer on fire"}')
    RETURNING id AS event_id \gset
-- With the trigger above installed there is nothing left to delete; without it, this
-- removes the row just written.
DELETE FROM public.outbox WHERE id = :'event_id';
COMMIT;
