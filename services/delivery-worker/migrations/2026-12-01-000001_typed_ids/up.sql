-- Deliveries and attempts get prefixed text ids (`dlv_…`, `att_…`) like endpoints and messages,
-- instead of BIGSERIAL numbers, so every id the API hands out is typed and parsed the same way.
--
-- Existing rows keep their order: `dlv_` || the old number as 32 hexadecimal digits, padded with
-- zeros, is a valid id and sorts before every new one. The columns use the "C" collation so ids
-- compare byte by byte whatever the database's locale, which keyset pagination (`id > $token`)
-- relies on.

-- A new id in SQL, for the deliveries that publishing fans out with one INSERT … SELECT (one per
-- subscribed endpoint, a number only the database knows). Making them in Rust would need a
-- second round trip per published event to learn the endpoints first, and a lock so none of them
-- is deleted in between. The text is a UUIDv7, like the ids Rust makes (`ids::DeliveryId::new`):
-- 12 hexadecimal digits of Unix milliseconds, so ids sort by creation, then 20 digits that are
-- random except for the UUID version (7) and variant nibbles, taken from gen_random_uuid().
CREATE FUNCTION new_id(prefix TEXT) RETURNS TEXT
LANGUAGE sql VOLATILE AS $$
    SELECT prefix
        || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
        || '7' || substr(r, 14, 3) || substr(r, 17, 16)
    FROM (SELECT replace(gen_random_uuid()::text, '-', '') AS r) AS random
$$;

ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;

ALTER TABLE deliveries ALTER COLUMN id DROP DEFAULT;
ALTER TABLE deliveries
    ALTER COLUMN id TYPE TEXT COLLATE "C" USING 'dlv_' || lpad(to_hex(id), 32, '0');
DROP SEQUENCE deliveries_id_seq;

ALTER TABLE attempts ALTER COLUMN id DROP DEFAULT;
ALTER TABLE attempts
    ALTER COLUMN id TYPE TEXT COLLATE "C" USING 'att_' || lpad(to_hex(id), 32, '0'),
    ALTER COLUMN delivery_id TYPE TEXT COLLATE "C"
        USING 'dlv_' || lpad(to_hex(delivery_id), 32, '0');
DROP SEQUENCE attempts_id_seq;

ALTER TABLE attempts ADD CONSTRAINT attempts_delivery_id_fkey
    FOREIGN KEY (delivery_id) REFERENCES deliveries (id) ON DELETE CASCADE;
