-- Webhooks delivered per tenant and UTC day, counted in the transaction that marks the
-- deliveries delivered (one row update per tenant and batch), so the count is exact and survives
-- the cleanup of delivered rows. The gateway's GET /v1/usage reads it through GetUsage.
CREATE TABLE usage_daily (
    tenant    TEXT COLLATE "C" NOT NULL,
    day       DATE NOT NULL,
    delivered BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
