-- The consumer side's bookkeeping (cdc_bridge.inbox), in the consumer's own database.
-- Every statement is idempotent: create_inbox_tables() runs this file as it is.

-- One row per message a consumer has settled: applied by its handler (or skipped as a
-- duplicate of one applied before) or parked. Written in the same transaction as the
-- handler's own writes, so a message is recorded exactly when its effects are committed.
CREATE TABLE IF NOT EXISTS public.cdc_inbox (
    consumer   text        NOT NULL,  -- the durable consumer's name
    msg_id     text        NOT NULL,  -- Nats-Msg-Id (the outbox row's id)
    stream_seq bigint      NOT NULL,
    cdc_lsn    pg_lsn,                -- the source transaction's commit LSN (Cdc-Lsn)
    outcome    text        NOT NULL DEFAULT 'applied' CHECK (outcome IN ('applied', 'parked')),
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, msg_id)
);
CREATE INDEX IF NOT EXISTS cdc_inbox_consumer_applied_at ON public.cdc_inbox (consumer, applied_at);

-- Groups the handler failed on max_attempts times: their messages are terminated in
-- JetStream (never delivered again) and kept here, with the last error.
CREATE TABLE IF NOT EXISTS public.cdc_inbox_parked (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer         text        NOT NULL,
    stream           text        NOT NULL,
    first_stream_seq bigint      NOT NULL,
    last_stream_seq  bigint      NOT NULL,
    cdc_lsn          pg_lsn,
    msg_ids          text[]      NOT NULL,
    subjects         text[]      NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL,
    parked_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cdc_inbox_parked_consumer ON public.cdc_inbox_parked (consumer, parked_at);

-- Where each consumer is in its stream: the last stream sequence it settled, written in
-- the same transaction. A consumer starting again reads from the next one, so its
-- database, not JetStream's ack state, decides what was applied.
CREATE TABLE IF NOT EXISTS public.cdc_inbox_position (
    consumer       text        PRIMARY KEY,
    stream         text        NOT NULL,
    stream_created timestamptz,           -- tells a stream deleted and made again apart
    stream_seq     bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
