"""Failpoints: named places where fault tests can make a process stall.

Off unless STOWAGE_FAILPOINTS is set (e.g. ``promote.after_copy=sleep:30``), so that a test
can SIGKILL a real worker at a known step, as FoundationDB and TiKV do with theirs.
"""

from __future__ import annotations

import asyncio
import os
import time


def _parse(spec: str) -> dict[str, float]:
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        if action.startswith("sleep:"):
            points[name] = float(action.removeprefix("sleep:"))
    return points


_POINTS = _parse(os.environ.get("STOWAGE_FAILPOINTS", ""))


def failpoint_blocking(name: str) -> None:
    """The same, for code that runs in a thread (a stalled resolver, a stuck disk)."""
    delay = _POINTS.get(name)
    if delay:
        time.sleep(delay)


async def failpoint(name: str) -> None:
    delay = _POINTS.get(name)
    if delay:
        await asyncio.sleep(delay)
