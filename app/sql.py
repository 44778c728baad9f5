"""SQL text built from what a request asks for, values always as parameters.

A list with optional filters is one statement per combination of the filters given, not one
catch-all ``($n IS NULL OR col = $n)`` statement: asyncpg prepares statements, Postgres moves
a prepared statement to a generic plan after a few runs, and a generic plan of the catch-all
cannot know which filters are set, so it uses none of their indexes (a scan of the whole table
at a million rows). For the same reason a page's LIMIT is written as a number (an int, never
text from a request): a generic plan guesses a parameter's LIMIT and may pick a scan in id
order that filters most rows away over the index that holds exactly the page."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


class Where:
    """Conditions joined by AND, with their parameters numbered from ``$1``."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str, value: Any) -> None:
        """``condition`` with ``{}`` where the value goes, e.g. ``"t.id < {}"``."""
        self.conditions.append(condition.format(self.param(value)))

    def add_if(self, condition: str, value: Any) -> None:
        """Only when a value was given (not None)."""
        if value is not None:
            self.add(condition, value)

    def add_known(self, column: str, value: str | None, known: Collection[str]) -> None:
        """``column = 'value'`` written out, for a value from a small fixed set (a state):
        with the value in the text, Postgres plans with that value's share of the rows (2%
        cached, 90% stored), where a generic plan assumes an average share and may read an
        app's every row for a rare state. Anything outside ``known`` is refused."""
        if value is None:
            return
        if value not in known:
            raise ValueError(f"{column} {value!r} is not one of {sorted(known)}")
        self.conditions.append(f"{column} = '{value}'")

    def sql(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "true"
