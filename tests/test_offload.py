"""OrderedOffload: blocking calls in threads, in order, a bounded number queued."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.offload import OrderedOffload


async def test_calls_run_in_order_in_threads_without_the_caller_waiting():
    done: list[int] = []
    main = threading.get_ident()
    threads: set[int] = set()
    gate = threading.Event()

    def work(i: int) -> None:
        threads.add(threading.get_ident())
        if i == 0:
            gate.wait()
        time.sleep(0.01 if i % 2 else 0.002)  # uneven: order must not depend on timing
        done.append(i)

    offload = OrderedOffload(depth=3)
    for i in range(3):  # returns while the first call is still blocked: queued, not awaited
        await asyncio.wait_for(offload.submit(work, i), 5)
    assert done == []
    gate.set()
    for i in range(3, 20):
        await offload.submit(work, i)
    await offload.drain()
    assert done == list(range(20))
    assert main not in threads


async def test_depth_bounds_what_is_queued():
    gate = threading.Event()
    offload = OrderedOffload(depth=2)
    await offload.submit(gate.wait)
    await offload.submit(lambda: None)
    third = asyncio.create_task(offload.submit(lambda: None))
    await asyncio.sleep(0.05)
    assert not third.done()  # two queued already: the caller waits
    gate.set()
    await asyncio.wait_for(third, 5)
    await offload.drain()


async def test_a_failure_drops_the_rest_and_is_raised():
    ran: list[int] = []
    gate = threading.Event()

    def fail() -> None:
        gate.wait()
        raise OSError("disk full")

    offload = OrderedOffload(depth=4)
    await offload.submit(fail)
    await offload.submit(ran.append, 1)
    gate.set()
    await offload.settle()  # settles without raising
    assert ran == []
    with pytest.raises(OSError, match="disk full"):
        await offload.drain()
    with pytest.raises(OSError, match="disk full"):
        await offload.submit(ran.append, 2)
    assert ran == []


async def test_settle_waits_for_a_running_call_after_the_caller_was_cancelled():
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.1)
        finished.set()

    offload = OrderedOffload(depth=1)
    await offload.submit(slow)
    blocked = asyncio.create_task(offload.submit(lambda: None))
    await asyncio.sleep(0.01)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await offload.settle()
    assert finished.is_set()
