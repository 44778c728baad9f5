"""What Postgres can store as text (or inside jsonb): no NUL, no lone UTF-16 surrogate (a JSON
escape or a percent-decoded byte can carry either). Checked at the edge, so such a value is a
422 naming its field, never a 500 from the database."""

from __future__ import annotations

from app.errors import InvalidInput


def text_problem(value: str) -> str | None:
    """Why Postgres could not store ``value`` as text (or inside jsonb), if it could not."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone UTF-16 surrogate, which is not a character"
    return None


def check_text(name: str, value: str | None, max_length: int | None = None) -> str | None:
    """``value`` if Postgres can store it and it is at most ``max_length`` characters long;
    InvalidInput (422) naming the field otherwise."""
    if value is None:
        return None
    if max_length is not None and len(value) > max_length:
        raise InvalidInput(f"{name} is longer than {max_length} characters", field=name)
    problem = text_problem(value)
    if problem:
        raise InvalidInput(f"{name} {problem}", field=name)
    return value
