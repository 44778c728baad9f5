"""Keyset pages: fetch one row more than asked, and the extra row says whether there is more."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID


@dataclass
class Page:
    items: list[Any]
    next_before: UUID | None = None  # the id to pass back for the next page


def page_of(rows: Sequence[Any], limit: int) -> Page:
    """`rows` were fetched with LIMIT limit + 1, ordered newest first."""
    if len(rows) > limit:
        return Page(items=list(rows[:limit]), next_before=rows[limit - 1]["id"])
    return Page(items=list(rows))
