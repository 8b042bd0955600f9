-- Outbox housekeeping, option (c): a time-partitioned outbox, one partition per day.
-- Old events go by dropping whole partitions (instant, no dead tuples, no vacuum)
-- instead of deleting rows (`cdc-bridge outbox prune`).
--
-- With pgoutput the bridge creates its publication FOR TABLE public.events WITH
-- (publish = 'insert', publish_via_partition_root = true): every event is routed as
-- public.events, and partitions created later are streamed without a restart.
-- wal2json cannot stream a partitioned outbox (docs/configuration.md, "Partitioned
-- outbox tables").
--
-- Run it with: psql "$DSN" -f sql/outbox_partitioned.sql
-- then nightly (pg_cron, or any scheduler): CALL public.events_maintain();
-- Config: outbox: {table: public.events} (config/partitioned.yaml).

CREATE TABLE IF NOT EXISTS public.events (
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- A partitioned table's primary key must include the partition key; the id alone
    -- is still the message id (Nats-Msg-Id).
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

-- Creates the partitions of today and the next `days_ahead` days (an insert with no
-- partition for its created_at fails, so keep some ready), and drops the partitions
-- whose every row is older than `keep`.
--
-- Dropping is safe while the bridge runs, even for events it has not published yet: it
-- reads them from the WAL (kept by the slot until they are confirmed), never from the
-- table, and decodes each change with the catalog as of that change.
CREATE OR REPLACE PROCEDURE public.events_maintain(
    keep interval DEFAULT '7 days', days_ahead integer DEFAULT 2
)
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    partition_name text;
BEGIN
    FOR day IN
        SELECT generate_series(current_date, current_date + days_ahead, interval '1 day')::date
    LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.events'
            ' FOR VALUES FROM (%L) TO (%L)',
            'events_' || to_char(day, 'YYYYMMDD'), day, day + 1
        );
    END LOOP;
    FOR partition_name IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.events'::regclass AND c.relname ~ '^events_[0-9]{8}$'
    LOOP
        -- The partition of day D holds [D, D + 1): all older than `keep` once D + 1 is.
        IF to_date(substr(partition_name, 8), 'YYYYMMDD') + 1 <= now() - keep THEN
            EXECUTE format('DROP TABLE public.%I', partition_name);
        END IF;
    END LOOP;
END
$$;

CALL public.events_maintain();
