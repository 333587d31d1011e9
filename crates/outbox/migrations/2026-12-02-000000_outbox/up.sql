-- The outbox: events a service has committed together with its own state changes, waiting to be
-- handed to delivery-worker by the relay. It lives in the schema of the service that owns it.
CREATE TABLE outbox (
    -- `evt_…`: the event id delivery-worker is idempotent on.
    id               TEXT PRIMARY KEY,
    -- The order of enqueueing; events of one aggregate are handed on in this order.
    seq              BIGSERIAL NOT NULL UNIQUE,
    tenant           TEXT NOT NULL,
    -- What the event is about, such as a job id.
    aggregate        TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    -- The exact JSON text partners receive.
    payload          TEXT NOT NULL,
    channels         TEXT[] NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL,
    -- The relay's claim: which claim holds the row, and until when.
    claim_id         UUID,
    lease_expires_at TIMESTAMPTZ,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    published_at     TIMESTAMPTZ,
    -- Refused by delivery-worker as invalid: kept for inspection, never retried.
    rejected_at      TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL AND rejected_at IS NULL;
CREATE INDEX outbox_pending_aggregate ON outbox (aggregate, seq)
    WHERE published_at IS NULL AND rejected_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
