-- The inbox: every verified inbound webhook, committed before it is acknowledged, once per
-- (source, delivery id) however often the sender retries it.
CREATE TABLE inbox (
    -- `evt_…`.
    id           TEXT COLLATE "C" PRIMARY KEY,
    -- `replicate`, `github`, or a registered source's name.
    source       TEXT NOT NULL,
    -- The sender's id of this delivery (`webhook-id`, `X-GitHub-Delivery`): the same on its
    -- retries, so a duplicate is recognised and acknowledged without being stored twice.
    delivery_id  TEXT NOT NULL,
    -- The path it arrived on, for failure monitoring (`/api/replicate-webhook/sound_effect/…`).
    path         TEXT NOT NULL,
    -- What it is about: for Replicate the content type and id in its path, and the prediction.
    subject_type TEXT,
    subject_id   TEXT,
    event_type   TEXT,
    -- The exact body received.
    payload      TEXT NOT NULL,
    -- received: stored, not yet dispatched; malformed: verified but not a valid event, kept for
    -- inspection and never dispatched.
    state        TEXT NOT NULL CHECK (state IN ('received', 'dispatched', 'done', 'failed', 'dead_letter', 'malformed')),
    last_error   TEXT,
    received_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (source, delivery_id)
);
CREATE INDEX inbox_state ON inbox (state, received_at);
