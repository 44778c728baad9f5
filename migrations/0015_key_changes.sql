-- API processes keep the keys they have seen in memory (app/auth/key_cache.py): any change to
-- a key (a revocation, an app's deletion, a removal) tells every one of them, on commit, to
-- forget what it kept. A process whose listening connection is down keeps nothing.
CREATE FUNCTION stowage_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stowage_keys', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION stowage_keys_changed();
