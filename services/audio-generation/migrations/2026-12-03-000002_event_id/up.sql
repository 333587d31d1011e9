-- The event the job ended with (`evt_…`, its outbox id, which delivery-worker keeps as the
-- message's event id): the job's timeline follows it to the partners' deliveries after the
-- outbox row itself is cleaned up.
ALTER TABLE jobs ADD COLUMN event_id TEXT;
