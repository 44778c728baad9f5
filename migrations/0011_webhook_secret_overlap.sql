-- Secret rotation with an overlap: the secret a rotation replaced keeps signing, beside the
-- new one, until previous_secret_until (STOWAGE_WEBHOOK_SECRET_OVERLAP after the rotation), so
-- that receivers can switch to the new secret without refusing deliveries meanwhile.
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_secret        text,
    ADD COLUMN previous_secret_until  timestamptz,
    ADD CONSTRAINT webhook_endpoints_previous_secret_until
        CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL));
