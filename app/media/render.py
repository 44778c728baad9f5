"""Run derivative rendering (images, PDF pages, video posters: app.media.previews) off the
event loop, in a bounded pool of threads.

Pillow releases the GIL while it decodes, resizes and encodes, so threads use every core
without pickling megabytes of pixels between processes; the pool's size bounds both CPU and
memory (one decoded image per thread).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from app.media.derivatives import DerivativeSpec
from app.media.previews import MediaLimits, Preview, build_preview
from app.storage import Storage

_POOL = ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 1),
                           thread_name_prefix="derivatives")


def allow_pixels(max_pixels: int) -> None:
    """Let Pillow open what profiles allow; its own bomb guard would otherwise fire first."""
    if max_pixels * 2 > (Image.MAX_IMAGE_PIXELS or 0):
        Image.MAX_IMAGE_PIXELS = max_pixels


async def preview(storage: Storage, key: str, mime_type: str,
                  specs: Mapping[str, DerivativeSpec], max_pixels: int | None,
                  limits: MediaLimits | None = None) -> Preview:
    """Derivatives, facts and placeholder of any file (app.media.previews), in the pool."""
    async with storage.local_path(key) as path:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            _POOL, lambda: build_preview(path, mime_type, specs, max_pixels=max_pixels,
                                         limits=limits))
