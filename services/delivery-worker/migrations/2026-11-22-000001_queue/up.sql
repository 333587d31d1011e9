-- The partner side of Sonora: endpoints, their encrypted secrets, published messages, the
-- delivery queue (one row per message and endpoint), the attempt log and the audit log.
-- Every timestamp is written by the service from its own clock, never by now(), so tests can
-- drive time.

CREATE TABLE endpoints (
    id                    TEXT PRIMARY KEY,
    tenant                TEXT NOT NULL,
    url                   TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    -- NULL: every event type / every channel.
    event_types           TEXT[],
    channels              TEXT[],
    disabled              BOOLEAN NOT NULL DEFAULT FALSE,
    disabled_reason       TEXT,
    disabled_at           TIMESTAMPTZ,
    rate_limit_per_second INTEGER CHECK (rate_limit_per_second > 0),
    metadata              JSONB NOT NULL DEFAULT '{}',
    signing               TEXT NOT NULL DEFAULT 'hmac' CHECK (signing IN ('hmac', 'ed25519')),
    -- Health: the start of the current run of failures, the last success, and a back-off the
    -- endpoint asked for (429/503 with Retry-After) or earned (timeouts, 502, 504).
    failing_since         TIMESTAMPTZ,
    last_success_at       TIMESTAMPTZ,
    throttled_until       TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX endpoints_tenant ON endpoints (tenant, id);

CREATE TABLE endpoint_secrets (
    id          BIGSERIAL PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    -- AES-256-GCM, bound to the endpoint id; the key id is inside the ciphertext too.
    key_id      TEXT NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    -- Set on the old secret by a rotation: it keeps signing until then.
    expires_at  TIMESTAMPTZ
);
CREATE INDEX endpoint_secrets_endpoint ON endpoint_secrets (endpoint_id, created_at DESC);

CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    channels    TEXT[] NOT NULL DEFAULT '{}',
    -- The exact JSON text published; partners receive these bytes.
    payload     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant, event_id)
);
CREATE INDEX messages_tenant_created ON messages (tenant, created_at DESC, id);

CREATE TABLE deliveries (
    id                   BIGSERIAL PRIMARY KEY,
    message_id           TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    endpoint_id          TEXT NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    status               TEXT NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'delivered', 'failed', 'dead_letter')),
    attempt_count        INTEGER NOT NULL DEFAULT 0,
    max_attempts         INTEGER NOT NULL,
    next_retry_at        TIMESTAMPTZ NOT NULL,
    last_response_status INTEGER,
    last_error           TEXT,
    -- The lease: which claim holds the row, and until when. A worker that dies loses it.
    claim_id             UUID,
    lease_expires_at     TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL,
    delivered_at         TIMESTAMPTZ,
    UNIQUE (message_id, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (next_retry_at) WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_endpoint_status ON deliveries (endpoint_id, status, created_at);
CREATE INDEX deliveries_delivered ON deliveries (delivered_at) WHERE status = 'delivered';

CREATE TABLE attempts (
    id              BIGSERIAL PRIMARY KEY,
    delivery_id     BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    message_id      TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    attempted_at    TIMESTAMPTZ NOT NULL,
    duration_ms     INTEGER NOT NULL,
    request_headers JSONB NOT NULL,
    response_status INTEGER,
    response_body   TEXT,
    error           TEXT,
    outcome         TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'timeout'))
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);
CREATE INDEX attempts_endpoint ON attempts (endpoint_id, id DESC);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    tenant      TEXT NOT NULL,
    endpoint_id TEXT,
    action      TEXT NOT NULL,
    details     JSONB NOT NULL DEFAULT '{}',
    at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant, id DESC);
