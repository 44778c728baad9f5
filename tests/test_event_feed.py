"""GET /v1/events: the webhook bodies with their ids, gap-free and exactly once in commit order
while many transactions commit at once (the proof), long-polls woken by NOTIFY, retention."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid

import asyncpg
import pytest

from app.auth import service as auth
from app.ids import uuid7
from app.webhooks import repository as webhooks_repo
from app.webhooks.feed import public_id
from tests import factories
from tests.conftest import AppKey, api_client, run_worker
from tests.receiver import Receiver


async def feed(client, tenant, **params):
    r = await client.get("/v1/events", headers=tenant.headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def connect(dsn: str) -> asyncpg.Connection:
    """A connection of its own (not the pool's), with the pool's jsonb codec."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    return conn


async def insert_event(conn, app_id, n: int, type_: str = "attachment.stored") -> uuid.UUID:
    event_id = uuid7()
    await webhooks_repo.insert_event(conn, event_id, app_id, type_, None,
                                     {"type": type_, "timestamp": "t", "data": {"n": n}}, None)
    return event_id


async def test_items_are_the_webhook_bodies_with_the_deliveries_webhook_id(res, client, tenant):
    with Receiver() as receiver:
        r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                              json={"url": receiver.url})
        assert r.status_code == 201, r.text
        att = await factories.upload(client, tenant)
        await run_worker(res)
        await asyncio.sleep(0)
        sent = {d.headers["webhook-id"]: d.json for d in receiver.received}
    page = await feed(client, tenant)
    assert [e["type"] for e in page["items"]] == ["attachment.cached", "attachment.stored"]
    assert page["next_cursor"] == page["items"][-1]["id"]
    assert len(sent) == 2
    for item in page["items"]:
        body = dict(item)
        event_id = body.pop("id")
        assert sent[event_id] == body  # exactly the webhook body; id = its webhook-id
        assert body["data"]["id"] == att["id"]
    # the test ping is not an event of the app
    ep = (await client.get("/v1/webhook-endpoints", headers=tenant.headers)).json()["items"][0]
    with Receiver():
        await client.post(f"/v1/webhook-endpoints/{ep['id']}/test", headers=tenant.headers)
    assert len((await feed(client, tenant))["items"]) == 2


async def test_pages_types_and_an_empty_page(res, client, tenant, other_tenant):
    async with res.pool.acquire() as conn:
        ids = [await insert_event(conn, tenant.app_id, i,
                                  "attachment.stored" if i % 2 else "attachment.cached")
               for i in range(7)]
        await insert_event(conn, other_tenant.app_id, 99)  # another app's: never seen here
    seen, after = [], None
    while True:
        page = await feed(client, tenant, limit=3, **({"after": after} if after else {}))
        assert len(page["items"]) <= 3
        if not page["items"]:
            assert page["next_cursor"] is None
            break
        seen += [e["id"] for e in page["items"]]
        after = page["next_cursor"]
    assert seen == [public_id(i) for i in ids]
    stored = await feed(client, tenant, types="attachment.stored")
    assert [e["data"]["n"] for e in stored["items"]] == [1, 3, 5]
    both = await feed(client, tenant, types="attachment.cached,attachment.stored", limit=100)
    assert len(both["items"]) == 7


@pytest.mark.parametrize("params,status", [
    ({"types": "attachment.nope"}, 422),
    ({"types": ""}, 422),
    ({"after": "not-an-id"}, 422),
    ({"after": str(uuid.uuid4())}, 422),  # the public id starts with msg_
    ({"after": f"msg_{uuid.uuid4()}"}, 404),
    ({"limit": 0}, 422),
    ({"limit": 1001}, 422),
    ({"wait": 61}, 422),
    ({"wait": -1}, 422),
])
async def test_bad_parameters(client, tenant, params, status):
    r = await client.get("/v1/events", headers=tenant.headers, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_another_apps_event_is_not_a_cursor(res, client, tenant, other_tenant):
    async with res.pool.acquire() as conn:
        theirs = await insert_event(conn, other_tenant.app_id, 1)
    r = await client.get("/v1/events", headers=tenant.headers,
                         params={"after": public_id(theirs)})
    assert r.status_code == 404
    assert (await client.get("/v1/events")).status_code == 401


async def test_gap_free_exactly_once_in_commit_order_under_concurrent_commits(res, tenant):
    """The proof: 16 writers commit 1–3 events per transaction, with random delays between
    insert and commit (so positions taken at insert would commit out of order) and a tenth of
    transactions rolled back; 4 readers (two through HTTP with long-polls, two through the
    service with random small pages) follow the feed while that runs. Each must see every
    committed event exactly once, all in one order, that order never putting an event before
    one whose transaction had finished committing before the other's began."""
    dsn = res.settings.database_url
    writers, per_writer = 16, 12
    rng = random.Random(2323)
    committed: list[dict] = []  # {"ids", "commit_start", "commit_end"}
    rolled_back: set[uuid.UUID] = set()
    counter = iter(range(10**9))
    done = asyncio.Event()

    async def writer(w: int) -> None:
        conn = await connect(dsn)
        try:
            for _ in range(per_writer):
                ids = []
                tx = conn.transaction()
                await tx.start()
                for _ in range(rng.randint(1, 3)):
                    ids.append(await insert_event(conn, tenant.app_id, next(counter)))
                    await asyncio.sleep(rng.uniform(0, 0.01))
                await asyncio.sleep(rng.uniform(0, 0.03))
                if rng.random() < 0.1:
                    await tx.rollback()
                    rolled_back.update(ids)
                    continue
                start = time.monotonic()
                await tx.commit()
                committed.append({"ids": ids, "commit_start": start,
                                  "commit_end": time.monotonic()})
        finally:
            await conn.close()

    async def http_reader() -> list[str]:
        seen: list[str] = []
        after = None
        async with api_client(res) as client:
            while True:
                params = {"limit": rng.randint(1, 6), "wait": 0.5,
                          **({"after": after} if after else {})}
                page = await feed(client, AppKey(tenant.app_id, tenant.api_key), **params)
                seen += [e["id"] for e in page["items"]]
                after = page["next_cursor"] or after
                if done.is_set() and not page["items"]:
                    return seen

    async def service_reader() -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = await res.event_feed.read(tenant.app_id, after=after, types=None,
                                             limit=rng.randint(1, 4), wait=0)
            seen += [public_id(i) for i in page.ids]
            after = page.ids[-1] if page.ids else after
            if done.is_set() and not page.ids:
                return seen
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def write_all() -> None:
        await asyncio.gather(*(writer(w) for w in range(writers)))
        done.set()

    results = await asyncio.wait_for(asyncio.gather(
        write_all(), http_reader(), http_reader(), service_reader(), service_reader()), 120)
    views = results[1:]

    expected = {public_id(i) for tx in committed for i in tx["ids"]}
    assert len(expected) > 100 and rolled_back
    order = views[0]
    for seen in views:
        assert len(seen) == len(set(seen)), "an event seen twice"
        assert set(seen) == expected, "an event missed (or a rolled-back one seen)"
        assert seen == order, "readers disagree on the order"
    index = {event_id: n for n, event_id in enumerate(order)}
    spans = []
    for tx in committed:
        where = [index[public_id(i)] for i in tx["ids"]]
        # one transaction's events: together, in the order it wrote them
        assert where == list(range(where[0], where[0] + len(where)))
        spans.append((tx["commit_start"], tx["commit_end"], where[0], where[-1]))
    # commit order: a transaction that finished committing before another began committing
    # comes first in the feed
    for _, a_end, _, a_last in spans:
        for b_start, _, b_first, _ in spans:
            if a_end < b_start:
                assert a_last < b_first


async def test_a_reader_at_a_later_commit_still_gets_an_earlier_insert(res, client, tenant):
    """The case the sequencer exists for: A inserts first, B inserts later and commits
    first. Ordered by insert (the event ids), a reader that has seen B would skip A."""
    dsn = res.settings.database_url
    a, b = await connect(dsn), await connect(dsn)
    try:
        tx_a = a.transaction()
        await tx_a.start()
        first = await insert_event(a, tenant.app_id, 1)
        async with b.transaction():
            second = await insert_event(b, tenant.app_id, 2)
        assert first < second  # UUIDv7: by insert time
        page = await feed(client, tenant)
        assert [e["id"] for e in page["items"]] == [public_id(second)]
        await tx_a.commit()
    finally:
        await a.close()
        await b.close()
    page = await feed(client, tenant, after=public_id(second))
    assert [e["id"] for e in page["items"]] == [public_id(first)]


async def test_wait_is_woken_by_the_commit_within_100_ms(res, client, tenant):
    latencies = []
    after = None
    for n in range(5):
        params = {"wait": 10, **({"after": after} if after else {})}
        poll = asyncio.create_task(client.get("/v1/events", headers=tenant.headers,
                                              params=params))
        await asyncio.sleep(0.2)
        assert not poll.done()  # nothing to answer yet: it waits
        async with res.pool.acquire() as conn:
            event_id = await insert_event(conn, tenant.app_id, n)
        committed = time.monotonic()
        r = await asyncio.wait_for(poll, 5)
        latencies.append(time.monotonic() - committed)
        assert r.status_code == 200
        assert [e["id"] for e in r.json()["items"]] == [public_id(event_id)]
        after = public_id(event_id)
    # woken by NOTIFY: a few ms here; a poll of Postgres once a second would take ~0.5 s
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 1.0, latencies


async def test_wait_answers_empty_when_the_time_is_up(client, tenant):
    t0 = time.monotonic()
    page = await feed(client, tenant, wait=0.5)
    assert page == {"items": [], "next_cursor": None}
    assert 0.45 <= time.monotonic() - t0 < 3


async def test_wait_with_a_type_filter_ignores_other_events(res, client, tenant):
    poll = asyncio.create_task(client.get("/v1/events", headers=tenant.headers,
                                          params={"wait": 10, "types": "attachment.deleted"}))
    await asyncio.sleep(0.2)
    async with res.pool.acquire() as conn:
        await insert_event(conn, tenant.app_id, 1, "attachment.stored")
    await asyncio.sleep(0.3)
    assert not poll.done()
    async with res.pool.acquire() as conn:
        deleted = await insert_event(conn, tenant.app_id, 2, "attachment.deleted")
    r = await asyncio.wait_for(poll, 5)
    assert [e["id"] for e in r.json()["items"]] == [public_id(deleted)]


@pytest.mark.settings(event_retention=1)
async def test_retention_410_and_the_sweep_keeps_events_and_deliveries(res, client, tenant):
    with Receiver() as receiver:
        r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                              json={"url": receiver.url})
        assert r.status_code == 201, r.text
        att = await factories.upload(client, tenant, promote="false")
        old = (await feed(client, tenant))["items"][0]
        await asyncio.sleep(1.2)
        async with res.pool.acquire() as conn:
            fresh = await insert_event(conn, tenant.app_id, 1)
        r = await client.get("/v1/events", headers=tenant.headers, params={"after": old["id"]})
        assert r.status_code == 410, r.text
        assert r.json()["type"].endswith("event-gone")
        assert await res.sweep.run() is not None
        async with res.pool.acquire() as conn:
            in_feed = await conn.fetchval("SELECT count(*) FROM event_feed f JOIN events e"
                                          " ON e.id = f.event_id WHERE e.app_id = $1",
                                          tenant.app_id)
            deliveries = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE e.app_id = $1", tenant.app_id)
        assert in_feed == 1  # the fresh one
        assert deliveries == 2  # the old event's delivery stays (and the fresh one's)
        timeline = await client.get(f"/v1/attachments/{att['id']}/events",
                                    headers=tenant.headers)
        assert any(e["kind"] == "event" for e in timeline.json()["items"])
        # still 410 once swept; the start of the feed is the oldest kept
        r = await client.get("/v1/events", headers=tenant.headers, params={"after": old["id"]})
        assert r.status_code == 410
        assert [e["id"] for e in (await feed(client, tenant))["items"]] == [public_id(fresh)]


async def test_an_app_deleted_takes_its_feed(res, client):
    new = await auth.create_app(res.pool, "gone")
    async with res.pool.acquire() as conn:
        await insert_event(conn, new.app_id, 1)
        await conn.execute("DELETE FROM apps WHERE id = $1", new.app_id)
        assert await conn.fetchval("SELECT count(*) FROM event_feed WHERE app_id = $1",
                                   new.app_id) == 0


async def test_event_feed_backfill_resumes(tmp_path):
    """Events from before 0018 join the feed below zero, oldest first, before every event
    written since; the backfill (0019) run again, as after a crash, adds nothing twice."""
    from app.migrate import migrate, migration_files
    from app.webhooks import feed_repository as feed_repo
    from tests.conftest import throwaway_database

    before, upto = tmp_path / "before", tmp_path / "upto"
    before.mkdir()
    upto.mkdir()
    for path in migration_files():
        if path.name < "0018":
            (before / path.name).write_text(path.read_text())
        if path.name < "0019":
            (upto / path.name).write_text(path.read_text())
    async with throwaway_database("stowage_backfill", migrated=False) as dsn:
        await migrate(dsn, before)
        conn = await connect(dsn)
        try:
            app_id = await conn.fetchval(
                "INSERT INTO apps (id, name) VALUES (gen_random_uuid(), 'old') RETURNING id")
            old = [await insert_event(conn, app_id, n) for n in range(30)]
            await insert_event(conn, app_id, 99, "webhook.test")
            await migrate(dsn, upto)  # the feed exists; the backfill has not run
            new = await insert_event(conn, app_id, 100)
            await conn.execute("CALL event_feed_backfill(7)")  # batches of 7
            await conn.execute("CALL event_feed_backfill(7)")  # again: nothing to add
            await migrate(dsn)  # 0019: once more, in the migration's own way
            rows = await feed_repo.page(conn, app_id, feed_repo.START, None, 1000)
            # by id: UUIDv7, the creation time (to the millisecond: the past keeps no commit
            # order to go by)
            assert [r["id"] for r in rows] == [*sorted(old), new]
            positions = await conn.fetch("SELECT position FROM event_feed ORDER BY position")
            assert [p["position"] for p in positions][:30] == list(range(-30, 0))
        finally:
            await conn.close()


async def test_wait_survives_a_lost_listen_connection(res, client, tenant):
    """The LISTEN connection dropped under a waiting poll: it listens again and is still woken
    by the next commit (rather than sleeping out its time)."""
    poll = asyncio.create_task(client.get("/v1/events", headers=tenant.headers,
                                          params={"wait": 20}))
    await asyncio.sleep(0.3)
    async with res.pool.acquire() as conn:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%stowage_%'")
    assert killed >= 1
    await asyncio.sleep(0.5)
    assert not poll.done()
    async with res.pool.acquire() as conn:
        event_id = await insert_event(conn, tenant.app_id, 1)
    r = await asyncio.wait_for(poll, 5)
    assert [e["id"] for e in r.json()["items"]] == [public_id(event_id)]
