CREATE FUNCTION inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER inbox_received AFTER INSERT ON inbox
    FOR EACH ROW WHEN (NEW.state = 'received') EXECUTE FUNCTION inbox_notify();
