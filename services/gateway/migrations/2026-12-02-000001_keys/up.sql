-- Tenants and their API keys. A key is stored only as a keyed hash (HMAC-SHA256 with the
-- server's pepper); the key itself is shown once, when it is made.
CREATE TABLE tenants (
    -- The tenant's slug (`acme`), as in every internal token and resource.
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    -- `key_…`: what the admin API, the logs and usage name a key by.
    id           TEXT COLLATE "C" PRIMARY KEY,
    tenant       TEXT NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL,
    -- `cw_live_`, `cw_test_`: shown with the key's first characters so people can tell keys
    -- apart (`cw_live_Ab12…`).
    prefix       TEXT NOT NULL,
    hint         TEXT NOT NULL,
    -- Lowercase hex of HMAC-SHA256(pepper, key).
    hash         TEXT NOT NULL UNIQUE,
    -- Space-separated: tts audio webhooks usage admin.
    scopes       TEXT NOT NULL,
    plan         TEXT NOT NULL,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant, id DESC);
