"""The scale fixture's generator (bench/scale_data.py) builds the shape issue 25 describes, on
a database the current migrations made: a small build, its counts checked within tolerance."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import asyncpg
import pytest

from app.migrate import migrate
from tests.conftest import PG_BASE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import scale_data

N = 2000


@pytest.fixture
async def scale_db():
    name = f"stowage_bench_{secrets.token_hex(4)}"
    dsn = f"{PG_BASE}/{name}"
    await migrate(dsn)  # creates it
    try:
        yield dsn
    finally:
        conn = await asyncpg.connect(f"{PG_BASE}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def test_scale_fixture_shape(scale_db):
    built = await scale_data.build(scale_db, N, log=lambda _: None)
    assert len(built.apps) == scale_data.APPS
    s = await scale_data.shape(scale_db)
    assert s["attachments"] == N and s["apps"] == scale_data.APPS
    assert s["largest_app"] == N // 2
    share = {state: s["states"].get(state, 0) / N for state in ("stored", "deleted", "failed",
                                                                "cached")}
    # 90/5/3/2 %, binomial at N=2000: a few standard deviations
    assert abs(share["stored"] - 0.90) < 0.03, share
    assert abs(share["deleted"] - 0.05) < 0.02, share
    assert abs(share["failed"] - 0.03) < 0.015, share
    assert abs(share["cached"] - 0.02) < 0.012, share
    assert abs(s["slot_share"] - 0.5) < 0.05
    # per attachment: ~2.03 events, ~0.54 deliveries, ~0.64 attempts, ~0.98 activity rows
    assert 1.95 < s["events"] / N < 2.1
    assert 0.45 < s["webhook_deliveries"] / N < 0.62
    assert s["webhook_deliveries"] < s["webhook_attempts"] < 1.4 * s["webhook_deliveries"]
    assert 0.93 < s["attachment_activity"] / N < 1.03
    assert set(s["deliveries_by_status"]) <= {"delivered", "failed", "pending"}
    conn = await asyncpg.connect(scale_db)
    try:
        # the row counts the triggers keep agree with the rows (what /metrics reads)
        counted = {r["value"]: r["n"] for r in await conn.fetch(
            "SELECT value, sum(n)::bigint AS n FROM current_row_counts"
            " WHERE kind = 'attachments' GROUP BY value")}
        assert counted == s["states"]
        # ids order by creation (UUIDv7), as the keyset pages assume
        out_of_order = await conn.fetchval(
            "SELECT count(*) FROM (SELECT created_at, lag(created_at) OVER (ORDER BY id) AS prev"
            " FROM attachments) t WHERE prev > created_at + interval '1 millisecond'")
        assert out_of_order == 0
        # nothing is due for the sweep
        due = await conn.fetchval(
            "SELECT count(*) FROM attachments WHERE (state = 'deleted' AND purged_at IS NULL)"
            " OR (state IN ('stored', 'failed') AND cache_purged_at IS NULL)"
            " OR (state = 'cached' AND expires_at <= now())")
        assert due == 0
    finally:
        await conn.close()
