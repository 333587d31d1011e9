DROP INDEX inbox_tenants;
ALTER TABLE inbox_attempts DROP COLUMN tenant;
