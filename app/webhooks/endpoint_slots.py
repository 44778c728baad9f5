"""At most N attempts at once per webhook endpoint, across every worker process.

A receiver that hangs until the timeout, or a name that never resolves, makes each attempt
last seconds; a thousand pending deliveries to it would take every delivery slot there is and
delay every other tenant's webhooks. Each endpoint gets a few slots in Redis (a sorted set of
holders scored by when they took the slot, so a holder that died frees its slot after `ttl`);
an attempt that finds none free is put back a moment later without counting as an attempt.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)

# KEYS[1] the endpoint's set; ARGV: now, ttl, slots, holder. 1 when the holder got a slot.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
  return 1
end
return 0
"""


class EndpointBusy(Exception):
    """Every slot of the endpoint is taken: try the delivery again in `retry_in` seconds."""

    def __init__(self, endpoint_id: UUID, retry_in: float) -> None:
        super().__init__(f"endpoint {endpoint_id} has no free delivery slot")
        self.retry_in = retry_in


def _key(endpoint_id: UUID) -> str:
    return f"stowage:webhook-slots:{endpoint_id}"


@contextlib.asynccontextmanager
async def endpoint_slot(redis: Any, endpoint_id: UUID, *, slots: int, ttl: float
                        ) -> AsyncIterator[None]:
    """Hold one of the endpoint's slots for the block; EndpointBusy when none is free. With
    Redis unreachable the attempt goes ahead uncounted (a delivery needs no Redis to be
    sent, and the cap is a fairness measure, not a guarantee)."""
    holder = secrets.token_hex(8)
    try:
        took = await redis.eval(_TAKE, 1, _key(endpoint_id), time.time(), ttl, slots, holder)
    except Exception as e:
        log.warning("endpoint slots unavailable (%s); delivering without the cap", e)
        yield
        return
    if not took:
        raise EndpointBusy(endpoint_id, retry_in=1.0 + secrets.randbelow(1000) / 1000)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await redis.zrem(_key(endpoint_id), holder)
