"""The queries that run per request or per sweep pass use their indexes (issue 25).

A database of 20,000 attachments in the shape of a busy install (bench/ has the 1 M-row
version, with timings) and, for each query as the code sends it, its plan: no sequential scan
of a big table. Plans are taken as *generic* plans (``plan_cache_mode = force_generic_plan``):
asyncpg prepares every statement, Postgres moves a prepared statement to its generic plan after
a few runs, and a query that only finds its index with the parameters' values in hand (a
catch-all ``$1 IS NULL OR ...``) scans the table from then on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from app.attachments import repository as attachments_repo
from app.attachments import timeline_repository as timeline_repo
from app.dashboard import repository as dashboard_repo
from app.idempotency import repository as idempotency_repo
from app.ops import repository as ops_repo
from app.webhooks import feed_repository as feed_repo
from app.webhooks import repository as webhooks_repo
from tests.conftest import throwaway_database

ROWS = 20_000
BIG_TABLES = {"attachments", "events", "webhook_deliveries", "event_feed", "idempotency_keys"}
MAX_DISCARDED = 500


@pytest.fixture(scope="module")
async def plans_db() -> AsyncIterator[str]:
    async with throwaway_database("stowage_plans") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(FILL.replace("$1", str(ROWS)))
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        yield dsn


# Two apps (one with nine in ten rows); 90% stored, 5% deleted, 3% failed, 2% cached; half in
# record slots; two events per attachment, a delivery for each.
FILL = """
INSERT INTO apps (id, name) VALUES
    ('00000000-0000-7000-8000-000000000001', 'big'),
    ('00000000-0000-7000-8000-000000000002', 'small');
INSERT INTO webhook_endpoints (id, app_id, url, secret) VALUES
    ('00000000-0000-7000-8000-0000000000e1', '00000000-0000-7000-8000-000000000001',
     'https://example.com/hook', 'whsec_x');
INSERT INTO attachments (id, app_id, profile, state, storage, key, mime_type, size, sha256,
                         record_type, record_id, record_name, created_at, updated_at,
                         stored_at, deleted_at, purged_at, cache_purged_at, expires_at)
SELECT id, app_id, profile, state, CASE WHEN state = 'cached' THEN 'cache' ELSE 'store' END,
       'k/' || id, 'image/png', 100, repeat('0', 64),
       CASE WHEN n % 2 = 0 THEN 'user' END, CASE WHEN n % 2 = 0 THEN (n / 2)::text END,
       CASE WHEN n % 2 = 0 THEN 'avatar' END,
       at, at, CASE WHEN state = 'stored' THEN at END, CASE WHEN state = 'deleted' THEN at END,
       CASE WHEN state = 'deleted' THEN at END,
       CASE WHEN state IN ('stored', 'failed') THEN at END,
       CASE WHEN state = 'cached' THEN at + interval '1 day' END
FROM (
    SELECT n, ('00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid AS id,
           CASE WHEN n % 10 = 0 THEN '00000000-0000-7000-8000-000000000002'::uuid
                ELSE '00000000-0000-7000-8000-000000000001'::uuid END AS app_id,
           CASE WHEN n % 3 = 0 THEN 'avatar' ELSE 'default' END AS profile,
           CASE WHEN n % 100 < 90 THEN 'stored' WHEN n % 100 < 95 THEN 'deleted'
                WHEN n % 100 < 98 THEN 'failed' ELSE 'cached' END AS state,
           now() - make_interval(secs => $1 - n) AS at
    FROM generate_series(1, $1) AS n
) AS g;
INSERT INTO events (id, app_id, type, attachment_id, body)
SELECT gen_random_uuid(), app_id, t, id, '{}' FROM attachments,
       unnest(ARRAY['attachment.cached', 'attachment.stored']) AS t;
INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status)
SELECT gen_random_uuid(), id, '00000000-0000-7000-8000-0000000000e1', 'delivered'
FROM events;
INSERT INTO idempotency_keys (app_id, key, endpoint, fingerprint, status, expires_at)
SELECT '00000000-0000-7000-8000-000000000001', 'key-' || n, 'POST /v1/attachments/raw', 'f',
       201, now() + make_interval(secs => n)
FROM generate_series(1, $1) AS n;
"""


class Explaining:
    """Stands in for a connection: each query a repository function sends is explained
    (generic plan) instead of run."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plans: list[tuple[str, Any]] = []

    async def _explain(self, sql: str, *args: Any) -> None:
        # run, to count the rows each step read, in a transaction rolled back: an UPDATE of
        # the sweep changes nothing
        # The statement PREPAREd and EXECUTEd, as asyncpg has it run: EXPLAIN of the bare
        # statement would plan it for these values (a custom plan), never the generic one.
        tr = self.conn.transaction()
        await tr.start()
        try:
            await self.conn.execute(f"PREPARE q AS {sql}")
            # EXECUTE takes values, not parameters: each as a quoted literal, which Postgres
            # reads as the type the prepared statement wants
            values = [await self.conn.fetchval(
                "SELECT quote_nullable($1::text)", None if a is None else str(a)) for a in args]
            raw = await self.conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE q"
                + (f"({', '.join(values)})" if values else ""))
        finally:
            await tr.rollback()
            await self.conn.execute("DEALLOCATE q")
        self.plans.append((sql, json.loads(raw)[0]["Plan"]))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        await self._explain(sql, *args)
        return []

    async def fetchrow(self, sql: str, *args: Any) -> None:
        await self._explain(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> None:
        await self._explain(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        await self._explain(sql, *args)
        return ""


def discarded(plan: dict[str, Any]) -> int:
    """Rows read and thrown away by a filter, over the whole plan: an index that does not
    match the query's predicate shows here (a scan of an app's every row for one slot)."""
    return (plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Join Filter", 0)
            + sum(discarded(child) for child in plan.get("Plans", [])))


def scans(plan: dict[str, Any]) -> list[str]:
    """The big tables a plan reads from end to end."""
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in BIG_TABLES:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


@pytest.fixture
async def explaining(plans_db: str) -> AsyncIterator[Explaining]:
    conn = await asyncpg.connect(plans_db)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        yield Explaining(conn)
    finally:
        await conn.close()


class PgArray(list):
    """A text[] parameter, as the Explaining stand-in passes it on: a Postgres literal."""

    def __str__(self) -> str:
        return "{" + ",".join(self) + "}"


BIG = uuid.UUID("00000000-0000-7000-8000-000000000001")
SOME = uuid.UUID("00000000-0000-7000-8000-000000000100")
NO_FILTER: dict[str, Any] = dict(state=None, record_type=None, record_id=None, record_name=None,
                                 before=None, limit=50)

QUERIES = {
    "list": lambda c: attachments_repo.list_for_app(c, BIG, **NO_FILTER),
    "list, next page": lambda c: attachments_repo.list_for_app(
        c, BIG, **{**NO_FILTER, "before": SOME}),
    "list of a slot": lambda c: attachments_repo.list_for_app(
        c, BIG, **{**NO_FILTER, "record_type": "user", "record_id": "42"}),
    "list of one slot name": lambda c: attachments_repo.list_for_app(
        c, BIG, **{**NO_FILTER, "record_type": "user", "record_id": "42",
                   "record_name": "avatar"}),
    "list by state": lambda c: attachments_repo.list_for_app(
        c, BIG, **{**NO_FILTER, "state": "cached"}),
    "sweep: expiry": lambda c: attachments_repo.expire_cached(c),
    "sweep: stale promotions": lambda c: attachments_repo.stale_promotions(c, 60),
    "sweep: rescans asked for": lambda c: attachments_repo.stale_rescans(c, 60),
    "sweep: deleted, not purged": lambda c: attachments_repo.unpurged_deleted(c, 60),
    "sweep: cache leftovers": lambda c: attachments_repo.cache_leftovers(c, 60),
    "sweep: due deliveries": lambda c: webhooks_repo.due_deliveries(c, 2),
    "dashboard: uploads per hour": lambda c: dashboard_repo.hourly_activity(c, 24),
    "dashboard: promotion lag": lambda c: dashboard_repo.promotion_lag(c, 3600),
    "dashboard: profiles in use": lambda c: dashboard_repo.profiles_in_use(c),
    "dashboard: counts per app": lambda c: dashboard_repo.state_counts(c),
    "dashboard: webhooks per app": lambda c: dashboard_repo.webhook_counts(c, 3600),
    "dashboard: endpoints": lambda c: dashboard_repo.endpoints_with_health(c, None, 20),
    "metrics: attachments by state": lambda c: ops_repo.attachments_by_state(c),
    "metrics: deliveries by status": lambda c: ops_repo.deliveries_by_status(c),
    "dashboard: list of a slot": lambda c: dashboard_repo.list_attachments(
        c, app_id=None, state=None, profile=None, record_type="user", record_id="42",
        record_name=None, created_from=None, created_to=None, before=None, limit=50),
    "timeline: events of an attachment": lambda c: timeline_repo.attachment_events(
        c, SOME, 100),
    "timeline: deliveries of an attachment": lambda c: timeline_repo.attachment_deliveries(
        c, SOME, 200, 100),
    # the event feed: a page of 100 reads 100 feed rows and 100 events, however many there are
    "feed: first page": lambda c: feed_repo.page(c, BIG, feed_repo.START, None, 100),
    "feed: a page after a cursor": lambda c: feed_repo.page(c, BIG, 20_000, None, 100),
    "feed: a page of one type": lambda c: feed_repo.page(
        c, BIG, feed_repo.START, PgArray(["attachment.stored"]), 100),
    "feed: where a cursor is": lambda c: feed_repo.cursor(c, BIG, SOME),
    "sweep: feed retention": lambda c: feed_repo.expire(c, 3600, 10_000),
    "idempotency: claim": lambda c: idempotency_repo.claim(
        c, BIG, "k", "POST /v1/attachments/raw", None, SOME, 30, 86400),
    "idempotency: a repeat": lambda c: idempotency_repo.get(c, BIG, "k"),
    "sweep: idempotency keys": lambda c: idempotency_repo.expire(c, 10_000),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_no_scan_of_a_big_table(explaining: Explaining, name: str) -> None:
    await QUERIES[name](explaining)
    assert explaining.plans, f"{name}: no query was sent"
    for sql, plan in explaining.plans:
        assert not scans(plan), f"{name}: {scans(plan)} scanned by\n{sql}\n{plan}"
        # a page is 50 rows; reading a few hundred more is not reading the table
        assert discarded(plan) <= MAX_DISCARDED, f"{name}: {discarded(plan)} rows read in vain" \
            f" by\n{sql}\n{plan}"


async def test_the_checks_see_a_scan_and_a_wasted_read(explaining: Explaining) -> None:
    # the test above can fail: a filter on an unindexed column is a scan, and one that an
    # index of the app's rows serves only in part reads them all
    await explaining.fetch("SELECT id FROM attachments WHERE filename = $1", "x")
    assert scans(explaining.plans[0][1]) == ["attachments"]
    await explaining.fetch("SELECT id FROM attachments WHERE app_id = $1 AND filename = $2"
                           " ORDER BY id DESC LIMIT 50", BIG, "x")
    assert discarded(explaining.plans[1][1]) > MAX_DISCARDED
