"""The transforms' render queue (issue 21): renders run off the event loop on a fixed number
of threads with a fixed number waiting; one more is refused (503 RendersBusy), never queued
without bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.errors import RendersBusy
from app.media.render_queue import RenderQueue


async def test_renders_beyond_threads_and_waiting_room_are_refused():
    q = RenderQueue(workers=2, waiting=3)
    release = threading.Event()
    running = []

    def work() -> str:
        running.append(threading.current_thread().name)
        release.wait(5)
        return "done"

    tasks = [asyncio.create_task(q.run(work)) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert q.admitted == 5 and len(running) == 2  # two run, three wait
    with pytest.raises(RendersBusy) as refused:
        await q.run(work)
    assert refused.value.status == 503
    release.set()
    assert await asyncio.gather(*tasks) == ["done"] * 5
    assert q.admitted == 0 and all(n.startswith("stowage-render") for n in running)
    assert await q.run(lambda: 42) == 42  # room again
    q.close()


async def test_the_event_loop_keeps_running_while_they_render():
    q = RenderQueue(workers=1, waiting=0)
    release = threading.Event()
    task = asyncio.create_task(q.run(lambda: release.wait(5)))
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5 and not task.done()
    release.set()
    assert await task is True
    q.close()


async def test_a_failing_render_frees_its_slot():
    q = RenderQueue(workers=1, waiting=0)

    def boom() -> None:
        raise ValueError("corrupt image")

    with pytest.raises(ValueError):
        await q.run(boom)
    assert q.admitted == 0 and await q.run(lambda: "ok") == "ok"
    q.close()
