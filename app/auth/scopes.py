"""What an API key may do: its scopes. Every /v1 route requires one (app/deps.py declares it
per route; tests/test_scopes.py checks every operation of the OpenAPI document has one)."""

from __future__ import annotations

from app.errors import InvalidInput, StowageError

UPLOAD, READ, DELETE, WEBHOOKS = "upload", "read", "delete", "webhooks"
# in the order they are shown
SCOPES: tuple[str, ...] = (UPLOAD, READ, DELETE, WEBHOOKS)
SCOPE_DOC = {
    UPLOAD: "upload files (multipart, raw, presigned, tus), promote, reprocess, rescan,"
            " mint upload tokens",
    READ: "read attachments, their files, variants, timelines, usage",
    DELETE: "delete attachments",
    WEBHOOKS: "manage webhook endpoints and deliveries",
}


# an upload token (app/uploads/tokens.py) as a bearer credential, told from an API key
UPLOAD_TOKEN_PREFIX = "sut_"


def is_upload_token(credential: str) -> bool:
    return credential.startswith(UPLOAD_TOKEN_PREFIX)


class InsufficientScope(StowageError):
    """The key is valid but lacks the scope the route requires."""

    status, slug, title = 403, "insufficient-scope", "The API key lacks the scope required"


def parse_scopes(text: str | None) -> tuple[str, ...]:
    """``upload,read`` → the scopes, in canonical order; None → all of them."""
    if text is None:
        return SCOPES
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(SCOPES))
    if unknown:
        raise InvalidInput(f"unknown scope(s) {', '.join(map(repr, unknown))}; scopes are"
                           f" {', '.join(SCOPES)}", field="scopes")
    if not names:
        raise InvalidInput(f"name at least one scope of {', '.join(SCOPES)}", field="scopes")
    return tuple(s for s in SCOPES if s in names)


def check_scope(scopes: tuple[str, ...] | frozenset[str], scope: str) -> None:
    if scope not in scopes:
        raise InsufficientScope(f"this API key lacks the scope {scope!r} (it has"
                                f" {', '.join(scopes) or 'none'})", scope=scope)
