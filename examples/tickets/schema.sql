-- The ticket service's own table. Its events go to the outbox table the bridge reads
-- (cdc_bridge/sql/outbox.sql, also created by `python service.py --init` and by
-- `cdc-bridge init`).
--
-- version counts the ticket's changes: every event carries the whole ticket with its
-- version, so a consumer can tell a newer state from an older or repeated one.
CREATE TABLE IF NOT EXISTS public.tickets (
    id         text        PRIMARY KEY,
    title      text        NOT NULL CHECK (title <> ''),
    status     text        NOT NULL DEFAULT 'open'
                           CHECK (status IN ('open', 'in_progress', 'closed')),
    version    integer     NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
