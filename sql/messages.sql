-- An outbox without a table: emit events as logical decoding messages (cdc-bridge with
-- outbox.message_prefixes, e.g. config/messages.yaml). Nothing is stored, nothing needs
-- cleaning up, and the event is still atomic with the business write: a transactional
-- message (first argument true) is decoded only if, and when, its transaction commits.
--
-- The content is a JSON object, the envelope:
--   aggregate_type, aggregate_id, event_type  required strings
--   payload                                   required, any JSON value; published as
--                                             its JSON text exactly as written here
--   id                                        optional string: the Nats-Msg-Id; without
--                                             it the bridge uses "<commit LSN>-<index>"
--   headers                                   optional object: its string entries
--                                             become message headers
-- Content that is not such an envelope goes to dead_letter.subject with the reason in
-- Cdc-Error (without a dead_letter the bridge stops there). Non-transactional messages
-- (first argument false) and other prefixes are ignored.
--
-- Run it with: psql "$DSN" -f sql/messages.sql

CREATE TABLE IF NOT EXISTS public.orders (
    id    text    PRIMARY KEY,
    total numeric NOT NULL
);

BEGIN;
INSERT INTO public.orders (id, total) VALUES ('O-1', 12.50);
-- json_build_object quotes and escapes the values; its text is the envelope.
SELECT pg_logical_emit_message(
    true,
    'orders',
    json_build_object(
        'aggregate_type', 'order',
        'aggregate_id', 'O-1',
        'event_type', 'placed',
        'payload', json_build_object('total', 12.50, 'currency', 'EUR'),
        'headers', json_build_object('Trace-Id', 'trace-123')
    )::text
);
COMMIT;

-- With an id of its own (e.g. to deduplicate retries of the same business operation):
BEGIN;
UPDATE public.orders SET total = 15.00 WHERE id = 'O-1';
SELECT pg_logical_emit_message(
    true,
    'orders',
    '{"id": "order-O-1-repriced", "aggregate_type": "order", "aggregate_id": "O-1",
      "event_type": "repriced", "payload": {"total": 15.00}}'
);
COMMIT;

-- Rolled back: no event.
BEGIN;
DELETE FROM public.orders WHERE id = 'O-1';
SELECT pg_logical_emit_message(
    true,
    'orders',
    '{"aggregate_type": "order", "aggregate_id": "O-1", "event_type": "cancelled", "payload": {}}'
);
ROLLBACK;
