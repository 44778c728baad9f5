"""app.renewal.renewing: what keeps leases and in-progress keys alive while work runs."""

from __future__ import annotations

import asyncio

from app.renewal import renewing


async def test_renews_while_the_block_runs_and_not_after():
    calls = []

    async def renew() -> None:
        calls.append(1)

    async with renewing(renew, 0.01):
        await asyncio.sleep(0.1)
    seen = len(calls)
    await asyncio.sleep(0.05)
    assert seen >= 3 and len(calls) == seen


async def test_a_failed_renewal_is_tried_again_and_false_ends_it():
    outcomes = iter([ConnectionError("down"), None, False])
    calls = []

    async def renew() -> bool | None:
        calls.append(1)
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async with renewing(renew, 0.01, what="a test lease"):
        await asyncio.sleep(0.2)
    assert len(calls) == 3  # raised, renewed, lost: no fourth turn
