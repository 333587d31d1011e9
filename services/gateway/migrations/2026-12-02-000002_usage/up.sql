-- Usage per key and UTC day: what `GET /v1/usage` reports and what the monthly character quota
-- is seeded from when Redis has lost its counter. Each gateway replica adds its counts in one
-- statement every few seconds (USAGE_FLUSH_INTERVAL), so metering never waits on a request.
CREATE TABLE usage_daily (
    tenant        TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    key_id        TEXT COLLATE "C" NOT NULL,
    day           DATE NOT NULL,
    requests      BIGINT NOT NULL DEFAULT 0,
    characters    BIGINT NOT NULL DEFAULT 0,
    audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    jobs          BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, key_id, day)
);
CREATE INDEX usage_daily_tenant_day ON usage_daily (tenant, day);
