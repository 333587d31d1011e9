-- Generic sources: senders that sign Standard Webhooks with a `whsec_` secret and post to
-- `/api/v1/webhooks/{name}`. Secrets are sealed with secret-box (AES-256-GCM), bound to the row's
-- id, and never stored in the clear.
CREATE TABLE sources (
    -- `src_…`.
    id                  TEXT COLLATE "C" PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    -- The tenant that registered it (its events are shown to that tenant); NULL: an operator's.
    tenant              TEXT,
    secret              BYTEA NOT NULL,
    -- After a rotation, the old secret, still accepted until `previous_expires_at`.
    previous_secret     BYTEA,
    previous_expires_at TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL,
    rotated_at          TIMESTAMPTZ
);
