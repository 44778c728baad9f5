"""The scale fixture's data (issue 25): N attachments over 20 apps in the shape of a long-lived
Stowage, built with set-based SQL on a database the project's migrations made.

Shape (issue 25): 20 apps, one of them (the first, "scale-0") with half of the rows; states
90% stored, 5% deleted, 3% failed, 2% cached; half of the attachments in record slots; about
2 events, 0.53 webhook deliveries, 0.63 delivery attempts and 0.98 activity rows per
attachment. Every row is "at rest": nothing is due for the sweep (stored and failed rows have
their cache copy purged, deleted ones their files, cached ones wait for a promote that is not
asked for yet and expire tomorrow; pending deliveries are due in an hour).

Apps and their keys come from the project's own code (app.auth.service.create_app), so the
API authenticates them; everything else is INSERT ... SELECT FROM generate_series naming
only the columns the generator has a value for, so column DEFAULTs, triggers (row counts)
and constraints of the current migrations apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

APPS = 20
ADMIN_TOKEN = "scale-admin-" + "t" * 20  # the dashboard's operator token in the fixture

# A UUIDv7 for a timestamp (ids order by creation in Stowage); PostgreSQL 15 has none built in.
# pg_temp: lives as long as the build's connection, leaves nothing in the schema.
UUID7 = """
CREATE FUNCTION pg_temp.uuid7_at(ts timestamptz) RETURNS uuid AS $$
  SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0')
          || '7' || substr(md5(random()::text), 1, 3)
          || substr('89ab', 1 + floor(random() * 4)::int, 1)
          || substr(md5(random()::text), 1, 15))::uuid
$$ LANGUAGE sql VOLATILE
"""

# One row per attachment: which app (every other row the big app), its state and slot, its
# time (spread over 180 days, in order, so ids and created_at agree), its content.
GEN = """
CREATE TEMP TABLE scale_gen AS
SELECT i, id, app_id, state, slot, created_at,
       convert_to('stowage scale fixture ' || id::text || E'\\n', 'UTF8') AS content
FROM (
  SELECT i, pg_temp.uuid7_at(created_at) AS id, apps[app_idx + 1] AS app_id, created_at,
         CASE WHEN r < 0.90 THEN 'stored' WHEN r < 0.95 THEN 'deleted'
              WHEN r < 0.98 THEN 'failed' ELSE 'cached' END AS state,
         random() < 0.5 AS slot
  FROM (
    SELECT i, random() AS r, $2::uuid[] AS apps,
           CASE WHEN i % 2 = 0 THEN 0 ELSE 1 + (i / 2) % ($3 - 1) END AS app_idx,
           now() - interval '180 days' * (1 - i::float8 / $1) AS created_at
    FROM generate_series(1, $1) AS i
  ) g
) g2
"""

ATTACHMENTS = """
INSERT INTO attachments (id, app_id, profile, state, storage, key, filename, mime_type, size,
    sha256, record_type, record_id, record_name, error, promote_requested_at, created_at,
    updated_at, stored_at, expires_at, deleted_at, purged_at, cache_purged_at)
SELECT id, app_id, 'default', state,
       CASE WHEN state IN ('stored', 'deleted') THEN 'store' ELSE 'cache' END,
       app_id || '/' || id || CASE WHEN state IN ('stored', 'deleted') THEN '/original.txt'
                                   ELSE '/upload' END,
       'file-' || i || '.txt', 'text/plain', octet_length(content),
       encode(sha256(content), 'hex'),
       CASE WHEN slot THEN 'user' END, CASE WHEN slot THEN i::text END,
       CASE WHEN slot THEN 'avatar' END,
       CASE WHEN state = 'failed' THEN '{"code": "corrupt_file", "detail":
            "the file could not be decoded"}'::jsonb END,
       CASE WHEN state IN ('stored', 'deleted', 'failed') THEN created_at END,
       created_at,
       created_at + CASE WHEN state = 'deleted' THEN interval '1 day'
                         ELSE interval '50 milliseconds' END,
       CASE WHEN state IN ('stored', 'deleted') THEN created_at + interval '50 milliseconds' END,
       CASE WHEN state = 'cached' THEN now() + interval '1 day' END,
       CASE WHEN state = 'deleted' THEN created_at + interval '1 day' END,
       CASE WHEN state = 'deleted' THEN created_at + interval '1 day 1 second' END,
       CASE WHEN state <> 'cached' THEN created_at + interval '60 milliseconds' END
FROM scale_gen
"""

# attachment.cached for every one; stored (stored and deleted), failed, deleted: ~2.03 each
EVENTS = """
INSERT INTO events (id, app_id, type, attachment_id, body, created_at)
SELECT pg_temp.uuid7_at(at), app_id, type, id,
       jsonb_build_object('type', type, 'timestamp', at, 'data',
           jsonb_build_object('id', id, 'state', split_part(type, '.', 2), 'derivatives',
                              '{}'::jsonb)),
       at
FROM (
  SELECT id, app_id, 'attachment.cached' AS type, created_at AS at FROM scale_gen
  UNION ALL
  SELECT id, app_id, 'attachment.stored', created_at + interval '50 milliseconds'
  FROM scale_gen WHERE state IN ('stored', 'deleted')
  UNION ALL
  SELECT id, app_id, 'attachment.failed', created_at + interval '50 milliseconds'
  FROM scale_gen WHERE state = 'failed'
  UNION ALL
  SELECT id, app_id, 'attachment.deleted', created_at + interval '1 day'
  FROM scale_gen WHERE state = 'deleted'
) e
"""

ENDPOINTS = """
INSERT INTO webhook_endpoints (id, app_id, url, secret)
SELECT pg_temp.uuid7_at(now()), a, 'https://hooks.example.com/stowage/' || n,
       'whsec_' || md5(a::text)
FROM unnest($1::uuid[]) WITH ORDINALITY AS t(a, n)
"""

# ~26.6% of events (533 k of 2 M) delivered to their app's endpoint: 95% delivered, 4%
# failed, 1% pending (due in an hour)
DELIVERIES = """
INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, attempts, next_attempt_at,
    last_status_code, delivered_at, created_at, updated_at)
SELECT pg_temp.uuid7_at(created_at), id, endpoint_id, status,
       CASE WHEN status = 'pending' THEN 1 WHEN status = 'failed' THEN 3
            ELSE 1 + (random() < 0.1)::int END,
       CASE WHEN status = 'pending' THEN now() + interval '1 hour' ELSE created_at END,
       CASE WHEN status = 'delivered' THEN 200 ELSE 503 END,
       CASE WHEN status = 'delivered' THEN created_at + interval '40 milliseconds' END,
       created_at, created_at + interval '40 milliseconds'
FROM (
  SELECT e.id, w.id AS endpoint_id, e.created_at, r,
         CASE WHEN r < 0.95 THEN 'delivered' WHEN r < 0.99 THEN 'failed'
              ELSE 'pending' END AS status
  FROM (SELECT id, app_id, created_at, random() AS r, random() AS pick FROM events) e
  JOIN webhook_endpoints w ON w.app_id = e.app_id
  WHERE e.pick < 0.2665
) d
"""

# one row per attempt counted in `attempts` (~1.18 per delivery: 630 k of 533 k)
ATTEMPTS = """
INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, error, duration_ms)
SELECT d.id, d.created_at + n * interval '1 second',
       CASE WHEN d.status = 'delivered' AND n = d.attempts THEN 200 ELSE 503 END,
       CASE WHEN d.status = 'delivered' AND n = d.attempts THEN NULL
            ELSE 'HTTP 503' END,
       20 + (random() * 80)::int
FROM webhook_deliveries d, generate_series(1, d.attempts) AS n
"""

# promotion.started for each stored (and later deleted) one, files.removed for deleted ones,
# promotion.started for failed ones: ~0.98 per attachment
ACTIVITY = """
INSERT INTO attachment_activity (attachment_id, at, kind, detail)
SELECT id, at, kind, detail FROM (
  SELECT id, created_at + interval '10 milliseconds' AS at, 'promotion.started' AS kind,
         '{"attempt": 1}'::jsonb AS detail
  FROM scale_gen WHERE state IN ('stored', 'failed')
  UNION ALL
  SELECT id, created_at + interval '1 day 1 second', 'files.removed', NULL
  FROM scale_gen WHERE state = 'deleted'
) a
"""


@dataclass
class Built:
    apps: list[dict[str, Any]]  # name, app_id, api_key (the first: the big app)
    seconds: dict[str, float]


async def create_apps(db_url: str, n: int = APPS) -> list[dict[str, Any]]:
    """The apps and their keys through the project's code, so that the API authenticates them."""
    from app.auth import service as auth

    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        apps = []
        for k in range(n):
            new = await auth.create_app(pool, f"scale-{k}")
            apps.append({"name": f"scale-{k}", "app_id": str(new.app_id),
                         "api_key": new.api_key})
        return apps
    finally:
        await pool.close()


async def build(db_url: str, rows: int, *, log=print) -> Built:
    """Fill a migrated, empty database with `rows` attachments in the issue's shape."""
    import time

    apps = await create_apps(db_url)
    app_ids = [UUID(a["app_id"]) for a in apps]
    seconds: dict[str, float] = {}
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(UUID7)
        steps: list[tuple[str, str, tuple[Any, ...]]] = [
            ("generate", GEN, (rows, app_ids, len(app_ids))),
            ("attachments", ATTACHMENTS, ()),
            ("events", EVENTS, ()),
            ("endpoints", ENDPOINTS, (app_ids,)),
            ("deliveries", DELIVERIES, ()),
            ("attempts", ATTEMPTS, ()),
            ("activity", ACTIVITY, ()),
        ]
        for name, sql, args in steps:
            t0 = time.monotonic()
            status = await conn.execute(sql, *args)
            seconds[name] = round(time.monotonic() - t0, 2)
            log(f"  {name}: {status} ({seconds[name]} s)")
        t0 = time.monotonic()
        # the counts' change rows become row_counts, as the worker's sweep would fold them
        from app import counts
        await counts.fold(conn)
        await conn.execute("DROP TABLE scale_gen")
        await conn.execute("VACUUM ANALYZE")
        seconds["vacuum_analyze"] = round(time.monotonic() - t0, 2)
        log(f"  vacuum analyze ({seconds['vacuum_analyze']} s)")
    finally:
        await conn.close()
    return Built(apps, seconds)


async def shape(db_url: str) -> dict[str, Any]:
    """What a built database holds: counts per table and state, the slot share."""
    conn = await asyncpg.connect(db_url)
    try:
        states = {r["state"]: r["n"] for r in await conn.fetch(
            "SELECT state, count(*) AS n FROM attachments GROUP BY state")}
        total = sum(states.values())
        per_app = [r["n"] for r in await conn.fetch(
            "SELECT count(*) AS n FROM attachments GROUP BY app_id ORDER BY n DESC")]
        slots = await conn.fetchval(
            "SELECT count(*) FROM attachments WHERE record_type IS NOT NULL")
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in (
            "events", "webhook_deliveries", "webhook_attempts", "attachment_activity")}
        deliveries = {r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY status")}
        return {"attachments": total, "states": states, "apps": len(per_app),
                "largest_app": per_app[0] if per_app else 0,
                "slot_share": round(slots / total, 4) if total else 0.0,
                "deliveries_by_status": deliveries, **counts}
    finally:
        await conn.close()
