"""The API key cache (issue 19): a key seen once needs no Postgres round trip until any key
changes; a revocation, from any process, empties it on commit; with its LISTEN connection
down it keeps nothing, so revocation stays immediate."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import pytest

from app.auth import repository as repo
from app.auth import service as auth
from app.auth.key_cache import KeyCache
from tests.conftest import wait_for


@pytest.fixture
async def cache(settings):
    kc = KeyCache(settings.database_url)
    yield kc
    await kc.close()


class Lookups:
    """The Postgres lookup, counted."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.calls = 0

    async def __call__(self, key_hash: bytes) -> UUID | None:
        self.calls += 1
        async with self.pool.acquire() as conn:
            return await repo.app_id_for_key_hash(conn, key_hash)


async def listening(cache: KeyCache, key_hash: bytes, lookup) -> None:
    await cache.app_for(key_hash, lookup)  # starts the listener
    await wait_for(lambda: _true(cache.listening), within=5, interval=0.02)


async def _true(value: bool) -> bool:
    return value


async def test_a_key_seen_once_is_then_known_without_postgres(res, cache):
    made = await auth.create_app(res.pool, "cached")
    h, lookup = auth.hash_key(made.api_key), Lookups(res.pool)
    await listening(cache, h, lookup)
    assert await cache.app_for(h, lookup) == made.app_id
    calls = lookup.calls
    for _ in range(20):
        assert await cache.app_for(h, lookup) == made.app_id
    assert lookup.calls == calls


async def test_a_revocation_empties_it_on_commit(res, cache):
    made = await auth.create_app(res.pool, "revoked")
    h, lookup = auth.hash_key(made.api_key), Lookups(res.pool)
    await listening(cache, h, lookup)
    assert await cache.app_for(h, lookup) == made.app_id
    await auth.revoke_key(res.pool, made.key_id)
    started = time.monotonic()

    async def refused() -> bool:
        return await cache.app_for(h, lookup) is None
    await wait_for(refused, within=2, interval=0.001)
    # the notice arrives with the commit: milliseconds, not the entries' lifetime (60 s)
    assert time.monotonic() - started < 0.5


async def test_an_app_deleted_takes_its_keys_out_of_it(res, cache):
    made = await auth.create_app(res.pool, "gone")
    h, lookup = auth.hash_key(made.api_key), Lookups(res.pool)
    await listening(cache, h, lookup)
    assert await cache.app_for(h, lookup) == made.app_id
    await auth.delete_app(res.pool, made.app_id)

    async def refused() -> bool:
        return await cache.app_for(h, lookup) is None
    await wait_for(refused, within=2, interval=0.005)


async def test_with_its_connection_lost_it_keeps_nothing_then_listens_again(res, cache):
    made = await auth.create_app(res.pool, "lost")
    h, lookup = auth.hash_key(made.api_key), Lookups(res.pool)
    await listening(cache, h, lookup)
    await cache.app_for(h, lookup)
    async with res.pool.acquire() as conn:  # Postgres drops the listener (a restart, ...)
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE query LIKE 'LISTEN%stowage_keys%'")
    await wait_for(lambda: _true(not cache.listening), within=5, interval=0.02)
    # nothing kept while it cannot hear of changes: a key revoked meanwhile is refused
    await auth.revoke_key(res.pool, made.key_id)
    calls = lookup.calls
    assert await cache.app_for(h, lookup) is None
    assert lookup.calls == calls + 1
    await wait_for(lambda: _true(cache.listening), within=5, interval=0.02)


async def test_a_lookup_that_raced_a_revocation_is_not_kept(res, cache):
    made = await auth.create_app(res.pool, "raced")
    h = auth.hash_key(made.api_key)
    plain = Lookups(res.pool)
    await listening(cache, h, plain)
    cache._forget()  # nothing kept from the start

    async def read_then_revoked(key_hash: bytes) -> UUID | None:
        app_id = await plain(key_hash)  # read while the key was good...
        epoch = cache._epoch
        await auth.revoke_key(res.pool, made.key_id)  # ...revoked before the answer is used
        await wait_for(lambda: _true(cache._epoch != epoch), within=2, interval=0.005)
        return app_id

    assert await cache.app_for(h, read_then_revoked) == made.app_id  # this request's answer
    calls = plain.calls
    assert await cache.app_for(h, plain) is None  # but not kept for the next one
    assert plain.calls == calls + 1


async def test_postgres_unreachable_means_lookups_as_before(res):
    kc = KeyCache("postgresql://127.0.0.1:1/nothing")
    made = await auth.create_app(res.pool, "nolisten")
    h, lookup = auth.hash_key(made.api_key), Lookups(res.pool)
    try:
        for _ in range(3):
            assert await kc.app_for(h, lookup) == made.app_id
            await asyncio.sleep(0.05)  # the background attempt to listen fails meanwhile
        assert not kc.listening and lookup.calls == 3
    finally:
        await kc.close()
