-- Back to BIGSERIAL: ids are renumbered 1, 2, … in their order (creation order), and attempts
-- follow their delivery's new number. (A type change's USING clause cannot hold a subquery, so
-- the lookups are session-local functions.)

ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;

CREATE TEMPORARY TABLE delivery_numbers ON COMMIT DROP AS
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM deliveries;
CREATE TEMPORARY TABLE attempt_numbers ON COMMIT DROP AS
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM attempts;
CREATE FUNCTION pg_temp.delivery_number(TEXT) RETURNS BIGINT LANGUAGE sql STABLE
    AS $$ SELECT n FROM delivery_numbers WHERE id = $1 $$;
CREATE FUNCTION pg_temp.attempt_number(TEXT) RETURNS BIGINT LANGUAGE sql STABLE
    AS $$ SELECT n FROM attempt_numbers WHERE id = $1 $$;

ALTER TABLE deliveries ALTER COLUMN id TYPE BIGINT USING pg_temp.delivery_number(id);
ALTER TABLE attempts
    ALTER COLUMN id TYPE BIGINT USING pg_temp.attempt_number(id),
    ALTER COLUMN delivery_id TYPE BIGINT USING pg_temp.delivery_number(delivery_id);

CREATE SEQUENCE deliveries_id_seq OWNED BY deliveries.id;
SELECT setval('deliveries_id_seq', (SELECT count(*) FROM delivery_numbers) + 1, false);
ALTER TABLE deliveries ALTER COLUMN id SET DEFAULT nextval('deliveries_id_seq');
CREATE SEQUENCE attempts_id_seq OWNED BY attempts.id;
SELECT setval('attempts_id_seq', (SELECT count(*) FROM attempt_numbers) + 1, false);
ALTER TABLE attempts ALTER COLUMN id SET DEFAULT nextval('attempts_id_seq');

ALTER TABLE attempts ADD CONSTRAINT attempts_delivery_id_fkey
    FOREIGN KEY (delivery_id) REFERENCES deliveries (id) ON DELETE CASCADE;

DROP FUNCTION new_id(TEXT);
