-- The dispatcher: each stored event's actions run with retries. A claim moves an event to
-- `dispatched` under a lease (`FOR UPDATE SKIP LOCKED`); a dispatcher that dies loses its lease
-- and another takes the event again once it expires.
ALTER TABLE inbox
    -- Attempts counted against the retry schedule (a rate-limited attempt is not counted).
    ADD COLUMN attempts         INTEGER NOT NULL DEFAULT 0,
    -- When a `failed` event is due again; NULL: due now.
    ADD COLUMN next_attempt_at  TIMESTAMPTZ,
    -- The claim that holds the event, and until when.
    ADD COLUMN claim_id         UUID,
    ADD COLUMN lease_expires_at TIMESTAMPTZ,
    -- When it became `done` or `dead_letter`: the retention counts from here.
    ADD COLUMN settled_at       TIMESTAMPTZ,
    -- The tenants its routing rules handed it to: who may see it over the API.
    ADD COLUMN tenants          TEXT[] NOT NULL DEFAULT '{}';

-- What the dispatcher looks for: events with work left, by when they are due.
CREATE INDEX inbox_due ON inbox (next_attempt_at NULLS FIRST, received_at)
    WHERE state IN ('received', 'dispatched', 'failed');
-- What the clean-up deletes.
CREATE INDEX inbox_settled ON inbox (settled_at) WHERE settled_at IS NOT NULL;

-- Every attempt of every action, for inspection and for exactly-once actions: an action that
-- succeeded is not run again when its event is retried or redriven.
CREATE TABLE inbox_attempts (
    id          BIGSERIAL PRIMARY KEY,
    event_id    TEXT COLLATE "C" NOT NULL REFERENCES inbox (id) ON DELETE CASCADE,
    -- The event's attempt number when it ran.
    attempt     INTEGER NOT NULL,
    -- `complete_prediction`, `publish:<rule>`, `agent_run:<rule>`.
    action      TEXT NOT NULL,
    -- succeeded; failed (may be tried again, as the schedule allows); rejected (never tried
    -- again: the event goes to the dead letters); throttled (the far side asked to wait; not
    -- counted against the schedule).
    outcome     TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'rejected', 'throttled')),
    error       TEXT,
    -- What the action produced (an agent run's id and web URL, an outbox event's id).
    result      TEXT,
    duration_ms INTEGER NOT NULL,
    at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX inbox_attempts_event ON inbox_attempts (event_id, id);

-- Wakes the dispatchers when a receiver commits a new event (delivered at commit).
CREATE FUNCTION inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER inbox_received AFTER INSERT ON inbox
    FOR EACH ROW WHEN (NEW.state = 'received') EXECUTE FUNCTION inbox_notify();
