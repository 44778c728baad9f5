"""Idempotency-Key: a repeated request answers what the first one answered, and creates
nothing (API.md, "Idempotent requests")."""
