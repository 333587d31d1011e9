-- The tenant of the rule an attempt ran for (publish, agent_run with a tenant): a tenant's
-- admin sees over the API only the attempts of its own rules. NULL for built-in actions.
ALTER TABLE inbox_attempts ADD COLUMN tenant TEXT;
-- Events routed to a tenant, for its listings.
CREATE INDEX inbox_tenants ON inbox USING GIN (tenants);
