"""One tenant's dead webhook receivers cannot slow another tenant's promotions.

App A has three endpoints that never take a delivery (a name whose lookup hangs, a port that
refuses, a server that accepts and never answers) and hundreds of deliveries pending to them.
App D has no endpoint at all: its uploads need only file work. Before deliveries had their own
queue, slots and resolver threads, D's uploads took 26-58 s to become stored; here each must be
stored within 1.5 s while A's deliveries grind on. (How close to an idle system it
stays is measured in bench/, not asserted here.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from app.auth import service as auth
from app.webhooks.endpoint_slots import EndpointBusy, endpoint_slot
from tests.conftest import env_for, free_port, process, settings_with, wait_for


@contextlib.contextmanager
def hanging_server() -> Iterator[int]:
    """Accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


async def test_dead_receivers_of_one_app_do_not_slow_another_apps_promotions(
        tmp_path, database_url, client, res):
    a = await auth.create_app(res.pool, "noisy")
    d = await auth.create_app(res.pool, "quiet")
    a_headers = {"Authorization": f"Bearer {a.api_key}"}
    d_headers = {"Authorization": f"Bearer {d.api_key}"}
    with hanging_server() as hang_port:
        for url in ("http://dead-receiver.invalid/hook", f"http://127.0.0.1:{free_port()}/hook",
                    f"http://127.0.0.1:{hang_port}/hook"):
            r = await client.post("/v1/webhook-endpoints", headers=a_headers, json={"url": url})
            assert r.status_code == 201, r.text
        for i in range(100):  # 100 cached events x 3 endpoints; no file work for A
            r = await client.post("/v1/attachments", headers=a_headers, data={"promote": "false"},
                                  files={"file": (f"{i}.txt", f"noise {i}".encode())})
            assert r.status_code == 201
        async with res.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 300

        settings = settings_with(res.settings, webhook_timeout=2,
                                 webhook_retry_delays="1,1,1,1,1,1,1,1,1,1")
        env = {**env_for(settings), "STOWAGE_WEBHOOK_DNS_TIMEOUT": "1",
               # every name lookup hangs 5 s in its thread, as with an unreachable resolver
               "STOWAGE_FAILPOINTS": "webhook.resolve=sleep:5"}
        with process(["worker"], env, tmp_path / "worker.log") as worker:
            async def busy() -> bool:  # deliveries to A's endpoints are being attempted
                async with res.pool.acquire() as conn:
                    return await conn.fetchval(
                        "SELECT count(*) FROM webhook_attempts") >= 10
            await wait_for(busy, within=30, interval=0.5)

            latencies = []
            for i in range(10):
                started = time.monotonic()
                r = await client.post("/v1/attachments", headers=d_headers,
                                      files={"file": (f"d{i}.txt", f"quiet {i}".encode())})
                assert r.status_code == 201
                att_id = r.json()["id"]
                while True:
                    r = await client.get(f"/v1/attachments/{att_id}?wait=10", headers=d_headers)
                    if r.json()["state"] != "cached" or time.monotonic() - started > 30:
                        break
                assert r.json()["state"] == "stored", r.text
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.2)
            async with res.pool.acquire() as conn:
                still_pending = await conn.fetchval(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            assert worker.poll() is None
    assert still_pending > 100, "the dead endpoints' deliveries were not still grinding"
    # idle: ~0.05 s each; with the resolver in the shared thread pool: 3.7-4.8 s each
    assert max(latencies) < 1.5, latencies


async def test_an_endpoint_has_a_few_delivery_slots_and_a_dead_holders_slot_frees(res):
    ep = uuid.uuid4()
    async with contextlib.AsyncExitStack() as held:
        await held.enter_async_context(endpoint_slot(res.redis, ep, slots=2, ttl=1.0))
        await held.enter_async_context(endpoint_slot(res.redis, ep, slots=2, ttl=1.0))
        with pytest.raises(EndpointBusy):
            async with endpoint_slot(res.redis, ep, slots=2, ttl=1.0):
                pass
        async with endpoint_slot(res.redis, uuid.uuid4(), slots=2, ttl=1.0):
            pass  # another endpoint's slots are its own
    async with endpoint_slot(res.redis, ep, slots=2, ttl=1.0):
        pass  # released
    # holders that died without releasing: their slots free after the ttl
    dead = [endpoint_slot(res.redis, ep, slots=2, ttl=1.0) for _ in range(2)]
    for cm in dead:
        await cm.__aenter__()
    with pytest.raises(EndpointBusy):
        async with endpoint_slot(res.redis, ep, slots=2, ttl=1.0):
            pass
    await asyncio.sleep(1.1)
    async with endpoint_slot(res.redis, ep, slots=2, ttl=1.0):
        pass
