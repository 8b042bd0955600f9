-- The outbox table cdc-bridge reads by default (outbox.table: public.outbox).
-- Applications insert one row per event in the same transaction as their business write.
-- The bridge reads inserts from the WAL, so rows may be deleted right after they commit
-- (or in the same transaction); nothing here is ever updated by the bridge.
CREATE TABLE IF NOT EXISTS public.outbox (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
