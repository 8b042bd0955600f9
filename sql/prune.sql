-- Outbox housekeeping, option (b) inside the database: a retention job run by pg_cron.
-- It does what `cdc-bridge outbox prune --older-than 7d` does: delete rows whose
-- created_at is older than the age, a batch per transaction.
--
-- Safe while the bridge runs, and for rows the bridge has not published yet: the bridge
-- reads events from the WAL (which the slot keeps until they are confirmed), never from
-- the table, and its publication carries inserts only, so deletes are not events.
--
-- Run it with: psql "$DSN" -f sql/prune.sql
-- (adapt public.outbox if your outbox.table is another; one procedure per table)

-- Batches find old rows through this index instead of scanning the whole table each
-- time. CONCURRENTLY: building it does not block the application's inserts.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_created_at_idx ON public.outbox (created_at);

-- CALL public.outbox_prune('7 days') deletes rows created more than 7 days ago.
-- The cutoff is fixed when the call starts, so rows written meanwhile are never its
-- business and the loop ends. Each batch commits on its own (a procedure may commit
-- when it is CALLed outside a transaction block, as pg_cron and psql do): locks and
-- WAL bursts stay small, and an interrupted run loses only its current batch.
CREATE OR REPLACE PROCEDURE public.outbox_prune(
    older_than interval DEFAULT '7 days',
    batch_size integer DEFAULT 10000
)
LANGUAGE plpgsql AS $$
DECLARE
    cutoff  timestamptz := now() - older_than;
    deleted bigint;
    total   bigint := 0;
BEGIN
    LOOP
        -- By ctid, so no particular key is needed; SKIP LOCKED so that a row another
        -- session holds is left for the next run instead of stalling this one.
        DELETE FROM public.outbox
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM public.outbox
            WHERE created_at < cutoff
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED));
        GET DIAGNOSTICS deleted = ROW_COUNT;
        total := total + deleted;
        COMMIT;
        EXIT WHEN deleted < batch_size;
    END LOOP;
    RAISE NOTICE 'outbox_prune: deleted % rows created before %', total, cutoff;
END
$$;

-- Every night at 03:17, when the pg_cron extension is installed in this database
-- (shared_preload_libraries = 'pg_cron', CREATE EXTENSION pg_cron). Without it, only
-- a notice: schedule CALL public.outbox_prune('7 days') with any other scheduler.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        PERFORM cron.schedule('cdc-bridge-outbox-prune', '17 3 * * *',
                              $cmd$CALL public.outbox_prune('7 days')$cmd$);
    ELSE
        RAISE NOTICE 'pg_cron is not installed here: schedule '
                     'CALL public.outbox_prune(''7 days'') with another scheduler';
    END IF;
END
$$;
