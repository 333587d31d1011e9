DROP TRIGGER inbox_received ON inbox;
DROP FUNCTION inbox_notify();
DROP TABLE inbox_attempts;
DROP INDEX inbox_settled;
DROP INDEX inbox_due;
ALTER TABLE inbox
    DROP COLUMN attempts,
    DROP COLUMN next_attempt_at,
    DROP COLUMN claim_id,
    DROP COLUMN lease_expires_at,
    DROP COLUMN settled_at,
    DROP COLUMN tenants;
