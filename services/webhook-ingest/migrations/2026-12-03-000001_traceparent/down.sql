ALTER TABLE inbox DROP COLUMN traceparent;
