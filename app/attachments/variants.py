"""Image variants rendered on request (GET /v1/attachments/{id}/image), imgproxy-style but
inside the attachment's lifecycle: rendered once, kept in the store under the attachment's
prefix, served again from there, gone with the attachment.

Rendered once, on any number of API instances: identical requests in one process share one
render (`_inflight`); across processes the one holding the variant's advisory lock renders
while the others wait on it, then find the row it wrote. Renders run in the bounded
RenderQueue (503 past it)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from uuid import UUID

import asyncpg

from app import db
from app.attachments import keys
from app.attachments import variants_repository as repo
from app.errors import InvalidInput, InvalidState
from app.media import transform
from app.media.derivatives import ImageProcessingError
from app.storage import Storage, one_chunk

if TYPE_CHECKING:
    from app.attachments.links import Links
    from app.media.render_queue import RenderQueue
    from app.profiles import Profiles


class Variants:
    def __init__(self, *, pool: asyncpg.Pool, store: Storage, profiles: Profiles,
                 links: Links, queue: RenderQueue) -> None:
        self.pool = pool
        self.store = store
        self.profiles = profiles
        self.links = links
        self.queue = queue
        self._inflight: dict[tuple[UUID, int, str], asyncio.Future[asyncpg.Record]] = {}
        self.renders = 0  # renders this process made (tests count them)

    def check(self, row: Any, spec: transform.TransformSpec) -> None:
        """A variant `row`'s profile allows (422 otherwise), of a stored image (409)."""
        profile = self.profiles.get_or_default(row["profile"])
        if profile.transforms is None:
            raise InvalidInput(f"profile {profile.name!r} allows no image transforms (it has"
                               " no [transforms])")
        if row["state"] != "stored":
            raise InvalidState(f"attachment {row['id']} is {row['state']}; only stored images"
                               " are transformed", state=row["state"])
        if not str(row["mime_type"]).startswith("image/"):
            raise InvalidInput(f"attachment {row['id']} is {row['mime_type']}, not an image")
        try:  # the request's parameters again, now against the profile's limits
            transform.TransformSpec.parse(spec.query(), profile.transforms)
        except transform.TransformError as e:
            raise InvalidInput(str(e), field=e.field) from None

    def urls(self, row: Any, specs: list[transform.TransformSpec]) -> list[str]:
        return [self.links.image_url(row["id"], s.key_part(), urlencode(s.query()))
                for s in specs]

    async def variant(self, row: Any, spec: transform.TransformSpec) -> asyncpg.Record:
        """The variant's row, rendering it first if nobody has."""
        ident = (row["id"], row["generation"], spec.key_part())
        async with self.pool.acquire() as conn:
            found = await repo.get(conn, *ident)
        if found is not None:
            return found
        running = self._inflight.get(ident)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._inflight[ident] = future
        try:
            made = await self._render_once(row, spec)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: only waiters need it
            raise
        else:
            future.set_result(made)
            return made
        finally:
            del self._inflight[ident]

    async def _render_once(self, row: Any, spec: transform.TransformSpec) -> asyncpg.Record:
        lock = f"variant:{row['id']}:{row['generation']}:{spec.key_part()}"
        async with self.pool.acquire() as conn:
            await db.advisory_lock(conn, lock)
            try:
                found = await repo.get(conn, row["id"], row["generation"], spec.key_part())
                if found is not None:  # another instance rendered it while we waited
                    return found
                profile = self.profiles.get_or_default(row["profile"])
                async with self.store.local_path(row["key"]) as path:
                    try:
                        rendered = await self.queue.run(
                            lambda: transform.render(path, spec,
                                                     max_pixels=profile.max_pixels))
                    except ImageProcessingError as e:
                        raise InvalidInput(f"the image cannot be transformed: {e.detail}"
                                           f" ({e.code})") from None
                self.renders += 1
                key = keys.variant_key(row["app_id"], row["id"], row["generation"],
                                       spec.key_part(), spec.ext)
                await self.store.write(key, one_chunk(rendered.data),
                                       content_type=rendered.mime_type)
                made = await repo.insert(
                    conn, att_id=row["id"], generation=row["generation"], params=spec.key_part(),
                    key=key, mime_type=rendered.mime_type, size=len(rendered.data),
                    width=rendered.width, height=rendered.height)
                if made is None:  # deleted or reprocessed meanwhile: nobody's file
                    await self.store.delete(key)
                    raise InvalidState(f"attachment {row['id']} changed while its image was"
                                       " rendered; ask again")
                return made
            finally:
                await db.advisory_unlock(conn, lock)

    async def usage(self, att_id: UUID, generation: int) -> tuple[int, int]:
        async with self.pool.acquire() as conn:
            return await repo.usage(conn, att_id, generation)

