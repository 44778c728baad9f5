"""Webhooks against a real HTTP receiver: signatures, retries, one webhook-id, the outbox
surviving Redis and worker loss, filters, tenants, SSRF, disabling, and the long-poll."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import time
import uuid
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.auth import service as auth
from app.bootstrap import event_link_ttl
from app.webhooks.delivery import BlockedDestination, is_forbidden_address, resolve_public
from tests import factories
from tests.conftest import (
    AppKey,
    api_client,
    env_for,
    lose_queued_jobs,
    make_settings,
    process,
    run_worker,
    wait_for,
)
from tests.factories import Clock, age_webhooks, on_clock
from tests.helpers import jpeg_bytes
from tests.receiver import Receiver, Reply


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
async def hooks(env_factory, request):
    """Services, client and tenant with fast retries; override with @pytest.mark.settings."""
    marker = request.node.get_closest_marker("settings")
    overrides = {"webhook_retry_delays": "0,0,0", "webhook_timeout": 0.5,
                 **(marker.kwargs if marker else {})}
    res = (await env_factory("file", **overrides)).res
    async with api_client(res) as client:
        new = await auth.create_app(res.pool, "hooks")
        yield res, client, AppKey(new.app_id, new.api_key)


async def subscribe(client, tenant, url, **body):
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": url, **body})
    assert r.status_code == 201, r.text
    return r.json()


async def upload(client, tenant, data=b"hello", **fields):
    return await factories.upload(client, tenant, data, "a.txt", **fields)


async def deliveries(client, tenant, endpoint_id):
    r = await client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries",
                         headers=tenant.headers)
    assert r.status_code == 200
    return r.json()["items"]


async def test_endpoint_crud_and_validation(hooks, receiver):
    _, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, description="main")
    assert ep["secret"].startswith("whsec_") and ep["enabled"] is True
    assert ep["events"] is None
    for bad in [{"url": "ftp://x/y"}, {"url": "not a url"}, {"url": "http:///nohost"},
                {"url": receiver.url, "events": ["attachment.exploded"]},
                {"url": receiver.url, "events": []}, {"url": receiver.url, "extra": 1}]:
        r = await client.post("/v1/webhook-endpoints", headers=tenant.headers, json=bad)
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.get(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers)
    assert r.json()["url"] == receiver.url
    r = await client.patch(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers,
                           json={"events": ["attachment.stored"], "rotate_secret": True,
                                 "enabled": False})
    assert r.status_code == 200
    assert r.json()["events"] == ["attachment.stored"] and r.json()["enabled"] is False
    assert r.json()["secret"] != ep["secret"]
    r = await client.patch(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers,
                           json={"url": "gopher://x"})
    assert r.status_code == 422
    listed = (await client.get("/v1/webhook-endpoints", headers=tenant.headers)).json()
    assert [e["id"] for e in listed["items"]] == [ep["id"]]
    assert (await client.delete(f"/v1/webhook-endpoints/{ep['id']}",
                                headers=tenant.headers)).status_code == 204
    assert (await client.get(f"/v1/webhook-endpoints/{ep['id']}",
                             headers=tenant.headers)).status_code == 404


async def test_events_are_signed_and_carry_the_attachment(hooks, receiver):
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url)
    att = await upload(client, tenant)
    await run_worker(res)
    # webhooks are unordered: deliveries run side by side
    assert sorted(r.json["type"] for r in receiver.received) == ["attachment.cached",
                                                                 "attachment.stored"]
    stored = receiver.of_type("attachment.stored")[0]
    event = Webhook(ep["secret"]).verify(stored.body, stored.headers)
    assert event["data"]["id"] == att["id"] and event["data"]["state"] == "stored"
    assert event["data"]["generation"] > att["generation"]
    assert datetime.fromisoformat(event["timestamp"]) <= datetime.now(UTC)
    other = "whsec_" + "A" * 43 + "="
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(stored.body, stored.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(ep["secret"]).verify(stored.body + b" ", stored.headers)
    assert stored.headers["webhook-id"] != receiver.of_type("attachment.cached")[0].headers[
        "webhook-id"]


@pytest.mark.parametrize("fields", [
    {}, {"promote": "false"},
    {"record_type": "user", "record_id": "1", "record_name": "avatar"},  # the slot path
])
async def test_the_cached_event_describes_the_row_as_written(hooks, receiver, fields):
    """The event of a new attachment is written with the row in one statement, from the row
    as INSERT makes it (known beforehand): it must say exactly what the API says."""
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    await subscribe(client, tenant, receiver.url, events=["attachment.stored"])
    att = await upload(client, tenant, **fields)
    got = (await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)).json()
    async with res.pool.acquire() as conn:
        events = await conn.fetch("SELECT id, type, body FROM events WHERE attachment_id = $1",
                                  uuid.UUID(att["id"]))
        endpoints = await conn.fetch(
            "SELECT endpoint_id FROM webhook_deliveries WHERE event_id = $1", events[0]["id"])
    assert [e["type"] for e in events] == ["attachment.cached"]
    data = events[0]["body"]["data"]
    for body in (data, att, got):  # signed links differ by the second they were signed in
        assert body.pop("url").startswith("http")
    assert data == att == got
    assert [r["endpoint_id"] for r in endpoints] == [uuid.UUID(ep["id"])]


async def test_retries_after_500_and_timeout_keep_one_webhook_id(hooks, receiver):
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    receiver.script = [Reply(500), Reply(200, delay=1.5), Reply(200)]  # 500, timeout, ok
    await upload(client, tenant, promote="false")
    await run_worker(res)
    assert len(receiver.received) == 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    for r in receiver.received:
        Webhook(ep["secret"]).verify(r.body, r.headers)
    [log] = await deliveries(client, tenant, ep["id"])
    assert (log["status"], log["attempts"], log["last_status_code"]) == ("delivered", 3, 200)
    assert log["delivered_at"] and log["next_attempt_at"] is None
    await run_worker(res)  # nothing more is sent after the success
    await res.sweep.run()
    await run_worker(res)
    assert len(receiver.received) == 3


async def test_gives_up_after_the_last_delay_then_manual_retry(hooks, receiver):
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    receiver.default = Reply(500)
    await upload(client, tenant, promote="false")
    await run_worker(res)
    [log] = await deliveries(client, tenant, ep["id"])
    assert (log["status"], log["attempts"], log["last_status_code"]) == ("failed", 4, 500)
    assert log["last_error"] == "HTTP 500" and log["event_type"] == "attachment.cached"
    receiver.default = Reply(204)
    r = await client.post(f"/v1/webhook-endpoints/{ep['id']}/deliveries/{log['id']}/retry",
                          headers=tenant.headers)
    assert r.status_code == 202
    await run_worker(res)
    [log] = await deliveries(client, tenant, ep["id"])
    assert log["status"] == "delivered" and log["attempts"] == 5
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1


def test_links_in_events_outlast_the_default_retry_schedule(tmp_path, database_url):
    settings = make_settings(tmp_path, database_url, webhook_retry_delays=(
        "5,30,120,600,1800,3600,10800,21600,43200"), download_url_ttl=3600, webhook_timeout=10)
    schedule = sum(settings.retry_delays)  # about 22.7 h, before jitter
    assert event_link_ttl(settings) >= schedule * 1.2 + 10 * 35 + 3600


THUMBS = """
[profiles.pictures]
types = ["image/*"]

[profiles.pictures.derivatives.thumb]
width = 32
height = 32
format = "png"
"""


async def test_the_links_of_an_event_work_when_its_last_retry_arrives(env_factory, receiver):
    """Links in events outlive the retry schedule: here a link lasts 1 s, and the event
    arrives on its second attempt, 4 s (±20 %) after the first."""
    res = (await env_factory("file", profiles=THUMBS, download_url_ttl=1,
                             webhook_retry_delays="4", webhook_timeout=0.5)).res
    async with api_client(res) as client:
        clock = Clock()
        res.rewire(links=on_clock(res.links, clock))
        new = await auth.create_app(res.pool, "links")
        tenant = AppKey(new.app_id, new.api_key)
        await subscribe(client, tenant, receiver.url, events=["attachment.stored"])
        receiver.script = [Reply(500)]
        r = await client.post("/v1/attachments", headers=tenant.headers,
                              data={"profile": "pictures"},
                              files={"file": ("red.jpg", jpeg_bytes(), "image/jpeg")})
        assert r.status_code == 201, r.text
        await run_worker(res)  # promotion, the failed attempt, and the retry
        first, second = receiver.received
        assert second.at - first.at >= 3  # a link signed as the API signs them is dead by now
        event = second.json
        assert event["type"] == "attachment.stored"
        urls = [event["data"]["url"]] + [d["url"] for d in event["data"]["derivatives"].values()]
        assert len(urls) == 2
        for url in urls:
            r = await client.get(url)
            assert r.status_code == 200, (url, r.text)
        # the API's own answers keep the short TTL
        att = (await client.get(f"/v1/attachments/{event['data']['id']}",
                                headers=tenant.headers)).json()
        assert (await client.get(att["url"])).status_code == 200
        clock.advance(3.1)  # a TTL of 1 s rounded up to its window: 1 to 2 s
        assert (await client.get(att["url"])).status_code == 403


async def test_retry_after_is_honoured_and_410_disables(hooks, receiver):
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    receiver.script = [Reply(503, headers={"Retry-After": "120"})]
    await upload(client, tenant, promote="false")
    # one attempt, by hand: a burst worker would wait out the 120 s deferral
    await res.redis.delete(res.settings.queue_name, res.jobs.delivery_queue_name)
    [log] = await deliveries(client, tenant, ep["id"])
    assert await res.webhooks.deliver(uuid.UUID(log["id"])) == "retrying"
    [log] = await deliveries(client, tenant, ep["id"])
    due = datetime.fromisoformat(log["next_attempt_at"])
    assert log["status"] == "pending" and (due - datetime.now(UTC)).total_seconds() > 100
    assert await res.webhooks.deliver(uuid.UUID(log["id"])) == "skipped"  # not due yet
    await res.redis.delete(res.settings.queue_name, res.jobs.delivery_queue_name)

    receiver.script = [Reply(410)]
    await upload(client, tenant, promote="false")
    await run_worker(res)
    got = (await client.get(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers)).json()
    assert got["enabled"] is False and "410" in got["disabled_reason"]


@pytest.mark.settings(webhook_disable_after=1)
async def test_endpoint_failing_too_long_is_disabled_then_reenabled(hooks, receiver):
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    receiver.default = Reply(500)
    await upload(client, tenant, promote="false")
    await run_worker(res)
    await age_webhooks(res, 1.2)  # failing for longer than webhook_disable_after
    await upload(client, tenant, promote="false")
    await run_worker(res)
    got = (await client.get(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers)).json()
    assert got["enabled"] is False and "no successful delivery" in got["disabled_reason"]
    sent = len(receiver.received)
    await upload(client, tenant, promote="false")
    await run_worker(res)
    assert len(receiver.received) == sent  # disabled: nothing new is sent
    r = await client.patch(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers,
                           json={"enabled": True})
    assert r.json()["enabled"] is True and r.json()["disabled_reason"] is None


async def test_filters_tenants_and_test_ping(hooks, receiver):
    res_, client, tenant = hooks
    only_stored = await subscribe(client, tenant, receiver.url + "?stored",
                                  events=["attachment.stored"])
    other = await auth.create_app(res_.pool, "other")
    other_key = AppKey(other.app_id, other.api_key)
    with Receiver() as other_receiver:
        await subscribe(client, other_key, other_receiver.url)
        await upload(client, tenant)
        await run_worker(res_)
        assert other_receiver.received == []
    assert [r.json["type"] for r in receiver.received] == ["attachment.stored"]
    r = await client.post(f"/v1/webhook-endpoints/{only_stored['id']}/test",
                          headers=tenant.headers)
    assert r.status_code == 202
    await run_worker(res_)
    ping = receiver.of_type("webhook.test")
    assert len(ping) == 1 and ping[0].json["data"]["endpoint_id"] == only_stored["id"]
    r = await client.post(f"/v1/webhook-endpoints/{only_stored['id']}/test",
                          headers=other_key.headers)
    assert r.status_code == 404


@pytest.mark.settings(webhook_allow_private=False)
async def test_ssrf_guard_refuses_private_destinations(hooks, receiver):
    _, client, tenant = hooks
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": receiver.url})
    assert r.status_code == 422 and "private" in r.json()["detail"]
    for url in ["http://10.0.0.8/x", "http://[::1]/x", "http://169.254.169.254/latest"]:
        r = await client.post("/v1/webhook-endpoints", headers=tenant.headers, json={"url": url})
        assert r.status_code == 422, url
    # a name is resolved at registration too (and at every delivery: see
    # test_a_delivery_that_can_never_succeed_fails_at_once)
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": f"http://localhost:{receiver.port}/hook"})
    assert r.status_code == 422 and "STOWAGE_WEBHOOK_ALLOW_PRIVATE" in r.json()["detail"]
    assert receiver.received == []


NOT_GLOBAL = [
    "100.64.0.1", "100.100.100.200",  # carrier-grade NAT (100.100.100.200: a cloud's metadata)
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "192.0.2.1", "198.18.0.1", "240.0.0.1", "255.255.255.255", "224.0.0.1", "239.1.2.3",
    "::", "::1", "fe80::1", "fc00::1", "fec0::1", "2001:db8::1", "ff02::1", "ff0e::1",
    "100::1", "4000::1",
    "::ffff:127.0.0.1", "::ffff:100.64.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "::a9fe:a9fe", "::127.0.0.1",  # IPv4-compatible (deprecated)
    "2002:a9fe:a9fe::1", "2002:7f00:1::", "2002:6440:1::1", "2002:a00:1::",  # 6to4
    "64:ff9b::a9fe:a9fe", "64:ff9b::6440:1", "64:ff9b::7f00:1",  # NAT64 (RFC 6052)
    "64:ff9b:1::a00:1",  # NAT64, local-use prefix (RFC 8215)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:0:808:808:0:f227:f7f7:f7f7",  # Teredo, server and client both public
]
GLOBAL = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2606:4700::1111",
          "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", NOT_GLOBAL)
def test_addresses_that_are_not_globally_routable_are_forbidden(address):
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", GLOBAL)
def test_globally_routable_addresses_are_allowed(address):
    assert not is_forbidden_address(ipaddress.ip_address(address))


async def test_delivery_refuses_what_resolves_to_a_forbidden_address_unless_allowed():
    for host in ("100.100.100.200", "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe"):
        with pytest.raises(BlockedDestination, match="private"):
            await resolve_public(host, 80, allow_private=False)
        assert await resolve_public(host, 80, allow_private=True) == host


@pytest.mark.settings(webhook_allow_private=False)
async def test_registration_refuses_cgnat_6to4_and_nat64_literals(hooks):
    _, client, tenant = hooks
    for url in ["http://100.64.0.1/hook", "http://100.100.100.200/latest/meta-data",
                "http://[2002:a9fe:a9fe::1]/hook", "http://[64:ff9b::a9fe:a9fe]/hook",
                "http://[::ffff:100.64.0.1]/hook",
                "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/"]:
        r = await client.post("/v1/webhook-endpoints", headers=tenant.headers, json={"url": url})
        assert r.status_code == 422, url
        assert r.headers["content-type"] == "application/problem+json"
        assert "private" in r.json()["detail"]
    ep = await subscribe(client, tenant, "https://[2002:808:808::1]/hook")
    r = await client.patch(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers,
                           json={"url": "http://100.64.0.1/hook"})
    assert r.status_code == 422


async def test_allow_private_still_allows_them(hooks):
    _, client, tenant = hooks  # the tests' settings allow private destinations
    await subscribe(client, tenant, "http://100.64.0.1/hook")
    await subscribe(client, tenant, "http://[2002:a9fe:a9fe::1]/hook")


async def test_deleted_and_failed_events(hooks, receiver):
    res, client, tenant = hooks
    await subscribe(client, tenant, receiver.url)
    att = await upload(client, tenant, promote="false")
    row = await res.attachments.get(tenant.app_id, uuid.UUID(att["id"]))
    await res.cache.delete(row["key"])
    await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    await run_worker(res)
    [failed] = receiver.of_type("attachment.failed")
    assert failed.json["data"]["error"]["code"] == "file_missing"
    await client.delete(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    await run_worker(res)
    [deleted] = receiver.of_type("attachment.deleted")
    assert deleted.json["data"]["id"] == att["id"] and deleted.json["data"]["url"] is None


async def test_events_survive_a_redis_flush(hooks, receiver, redis_client):
    res, client, tenant = hooks
    await subscribe(client, tenant, receiver.url)
    await upload(client, tenant, promote="false")
    # the committed event's job is gone
    assert await lose_queued_jobs(redis_client, res.settings.queue_name)
    await age_webhooks(res, 2.1)  # past the sweep's grace for due deliveries
    report = await res.sweep.run()
    assert len(report.deliveries) == 1
    await run_worker(res)
    assert [r.json["type"] for r in receiver.received] == ["attachment.cached"]


@pytest.mark.settings(job_timeout=3, webhook_timeout=1)
async def test_worker_sigkilled_between_commit_and_delivery(hooks, receiver, tmp_path):
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    env = env_for(res.settings)
    await upload(client, tenant, promote="false")

    async def claimed():
        return (await deliveries(client, tenant, ep["id"]))[0]["attempts"] == 1

    with process(["worker"], {**env, "STOWAGE_FAILPOINTS": "deliver.before_send=sleep:120"},
                 tmp_path / "w1.log") as first:
        await wait_for(claimed, within=20)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(5)
    assert receiver.received == []
    with process(["worker"], env, tmp_path / "w2.log"):
        await wait_for(lambda: _has(receiver), within=40, interval=0.2)
        await asyncio.sleep(1.0)
    assert len(receiver.received) == 1
    [log] = await deliveries(client, tenant, ep["id"])
    assert log["status"] == "delivered" and log["attempts"] == 2


async def _has(receiver) -> bool:
    return bool(receiver.received)


async def test_long_poll_wakes_on_promotion(hooks):
    res, client, tenant = hooks
    att = await upload(client, tenant, promote="false")
    started = time.monotonic()
    r = await client.get(f"/v1/attachments/{att['id']}?wait=1", headers=tenant.headers)
    assert r.json()["state"] == "cached"
    assert 0.9 < time.monotonic() - started < 3  # the deadline answers with the current state
    poll = asyncio.create_task(client.get(f"/v1/attachments/{att['id']}?wait=30",
                                          headers=tenant.headers))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    await run_worker(res)
    promoted_at = time.monotonic()
    r = await asyncio.wait_for(poll, 5)
    assert r.json()["state"] == "stored"
    assert time.monotonic() - promoted_at < 1.0
    r = await client.get(f"/v1/attachments/{att['id']}?wait=61", headers=tenant.headers)
    assert r.status_code == 422


async def test_broken_url_is_422_not_500(hooks):
    _, client, tenant = hooks
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": "http://[::1/x"})
    assert r.status_code == 422 and "valid URL" in r.json()["detail"]


async def test_endpoint_disabled_after_fan_out_gets_nothing(hooks, receiver):
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    await upload(client, tenant, promote="false")  # the delivery row exists now
    r = await client.patch(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers,
                           json={"enabled": False})
    assert r.json()["enabled"] is False
    await run_worker(res)
    assert receiver.received == []
    [log] = await deliveries(client, tenant, ep["id"])
    assert (log["status"], log["last_error"]) == ("failed", "endpoint disabled")


async def test_long_poll_answers_when_its_listen_connection_is_lost(hooks):
    res, client, tenant = hooks
    att = await upload(client, tenant, promote="false")
    poll = asyncio.create_task(client.get(f"/v1/attachments/{att['id']}?wait=30",
                                          headers=tenant.headers))
    await asyncio.sleep(0.3)
    assert not poll.done()
    async with res.pool.acquire() as conn:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%stowage_%'")  # its last LISTEN: any channel
    # this test's watcher, and those of the session's other environments (which listen
    # again when next needed); the poll below is answered early only if its own was one
    assert killed >= 1
    r = await asyncio.wait_for(poll, 5)  # answered with the current state, not left hanging
    assert r.status_code == 200 and r.json()["state"] == "cached"
    # and the next long-poll listens again
    poll = asyncio.create_task(client.get(f"/v1/attachments/{att['id']}?wait=30",
                                          headers=tenant.headers))
    await asyncio.sleep(0.3)
    await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    await run_worker(res)
    r = await asyncio.wait_for(poll, 5)
    assert r.json()["state"] == "stored"


async def test_endpoints_and_delivery_log_page_with_cursors(hooks, receiver):
    _, client, tenant = hooks
    eps = [await subscribe(client, tenant, f"{receiver.url}?{i}") for i in range(3)]
    for _ in range(5):
        await upload(client, tenant, promote="false")

    async def all_pages(path):
        seen, cursor = [], None
        while True:
            r = await client.get(path, headers=tenant.headers,
                                 params={"limit": 2, **({"cursor": cursor} if cursor else {})})
            body = r.json()
            assert len(body["items"]) <= 2
            seen += [x["id"] for x in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return seen

    assert await all_pages("/v1/webhook-endpoints") == [e["id"] for e in reversed(eps)]
    log = await all_pages(f"/v1/webhook-endpoints/{eps[0]['id']}/deliveries")
    assert len(log) == len(set(log)) == 5
    assert log == [d["id"] for d in await deliveries(client, tenant, eps[0]["id"])]


async def test_reprocess_sends_attachment_updated_with_the_new_derivative_links(
        hooks, receiver, tmp_path):
    """Clients that keep derivative links from webhooks learn the rebuilt ones."""
    from app.profiles import load_profiles
    from tests.helpers import jpeg_bytes

    res, client, tenant = hooks
    profiles_file = tmp_path / "profiles.toml"
    profiles_file.write_text('[profiles.pics]\ntypes = ["image/*"]\n'
                             '[profiles.pics.derivatives.thumb]\nwidth = 20\nheight = 20\n')
    res.rewire(profiles=load_profiles(profiles_file))
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.updated"])
    r = await client.post("/v1/attachments", headers=tenant.headers, data={"profile": "pics"},
                          files={"file": ("a.jpg", jpeg_bytes(80, 60))})
    att = r.json()
    await run_worker(res)
    before = (await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)).json()
    profiles_file.write_text('[profiles.pics]\ntypes = ["image/*"]\n'
                             '[profiles.pics.derivatives.thumb]\nwidth = 40\nheight = 40\n')
    res.rewire(profiles=load_profiles(profiles_file))
    r = await client.post(f"/v1/attachments/{att['id']}/reprocess", headers=tenant.headers)
    assert r.status_code == 202, r.text
    await run_worker(res)
    [updated] = receiver.of_type("attachment.updated")
    event = Webhook(ep["secret"]).verify(updated.body, updated.headers)
    thumb = event["data"]["derivatives"]["thumb"]
    assert thumb["width"] == 40 and thumb["url"] != before["derivatives"]["thumb"]["url"]
    assert event["data"]["generation"] > before["generation"]
    r = await client.get(thumb["url"].removeprefix(res.settings.public_url))
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"


@pytest.mark.settings(webhook_allow_private=False)
async def test_a_name_resolving_to_a_private_address_is_refused_at_registration(hooks):
    _, client, tenant = hooks
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": "http://localhost:8080/hook"})
    assert r.status_code == 422, r.text
    assert "STOWAGE_WEBHOOK_ALLOW_PRIVATE" in r.json()["detail"]
    # a name that does not resolve (yet) is accepted: deliveries retry
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": "http://not-yet-set-up.invalid/hook"})
    assert r.status_code == 201, r.text
    r = await client.patch(f"/v1/webhook-endpoints/{r.json()['id']}", headers=tenant.headers,
                           json={"url": "http://localhost/other"})
    assert r.status_code == 422, r.text


async def test_a_delivery_that_can_never_succeed_fails_at_once(hooks, receiver):
    """Registered when private addresses were allowed, delivered after they no longer are:
    the attempt is refused for good, not retried for a day."""
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url, events=["attachment.cached"])
    res.settings.webhook_allow_private = False
    try:
        await upload(client, tenant, promote="false")
        await run_worker(res)
    finally:
        res.settings.webhook_allow_private = True
    [log] = await deliveries(client, tenant, ep["id"])
    assert log["status"] == "failed" and log["attempts"] == 1, log
    assert "STOWAGE_WEBHOOK_ALLOW_PRIVATE" in log["last_error"]
    assert receiver.received == []


async def test_a_certificate_for_another_name_fails_at_once(hooks, tmp_path):
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    res, client, tenant = hooks
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run, ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                         "-subj", "/CN=someone-else.example", "-keyout", str(key),
                         "-out", str(cert)], check=True, capture_output=True)

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Ok)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ep = await subscribe(client, tenant, f"https://127.0.0.1:{server.server_port}/hook",
                             events=["attachment.cached"])
        await upload(client, tenant, promote="false")
        await run_worker(res)
        [log] = await deliveries(client, tenant, ep["id"])
    finally:
        server.shutdown()
    assert log["status"] == "failed" and log["attempts"] == 1, log
    assert log["last_error"].startswith("TLS:"), log
