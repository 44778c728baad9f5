"""When a delivery's attempts happen: backoff with jitter, and the horizon of the schedule.

Free of the service's imports, so the resource builder can size the links of events by it.
"""

from __future__ import annotations

import math
import random

RETRY_AFTER_CAP_S = 24 * 3600
JITTER = 0.2


def next_delay(delays: list[int], attempts: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after `attempts` tries, or None when they are spent."""
    if attempts > len(delays):
        return None
    base = delays[attempts - 1]
    delay = base * random.uniform(1 - JITTER, 1 + JITTER)  # spread retries of an outage
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
    return delay


def attempt_lease(timeout_s: float) -> int:
    """Seconds one attempt may take: longer than httpx's timeout, which is per phase
    (connect, write, read)."""
    return int(3 * timeout_s) + 5


def delivery_horizon(delays: list[int], timeout_s: float) -> int:
    """Seconds from an event to the end of its last automatic attempt, at the longest: every
    delay at its most jitter, every attempt its whole lease. A receiver's Retry-After that
    asks for more than the schedule is not counted (capped at RETRY_AFTER_CAP_S per attempt);
    neither is a worker too busy to attempt on time."""
    return (math.ceil(sum(delays) * (1 + JITTER))
            + (len(delays) + 1) * attempt_lease(timeout_s))
