"""Idempotency-Key, the HTTP part: the header, and running a route's work once per key.

Routes of the endpoints API.md names call `idempotent` with what they know of the request
before doing anything (or, for uploads, nothing: their fingerprint is made as the bytes are
read), and a function that does the work and returns the answer and the request's
fingerprint."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Header
from fastapi.responses import Response

from app.api_common import PROBLEM
from app.deps import provided
from app.idempotency.service import Answer, Idempotency

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# 1–255 visible ASCII characters (API.md)
KEY_PATTERN = "^[\\x21-\\x7e]{1,255}$"
EMPTY_SHA256 = hashlib.sha256().hexdigest()

# typed `str` (with a None default at each route) so that the document states a string, not
# "a string or null": a header cannot be null, and a fuzzer drawing null would only be
# throwing its draws away
IdempotencyKey = Annotated[str, Header(
    alias=HEADER, pattern=KEY_PATTERN, max_length=255,
    description="1–255 visible ASCII characters of the client's choosing, remembered for this"
    " app 24 hours: a repeat of the same request answers what the first answered (header"
    " `Idempotent-Replayed: true`) and creates nothing; while the first still runs: 409; the"
    " same key with another request: 422")]
IdempotencyDep = Annotated[Idempotency, Depends(provided("idempotency"))]

# the headers the server adds itself are not part of the answer kept
_NOT_KEPT = {"content-length", "date", "server"}


def responses(base: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """``base`` with what Idempotency-Key adds: the header of a replayed 201, and the answers
    409 and 422, their descriptions joined to those already there."""
    out = dict(base)
    created = out.get(201, {})
    out[201] = {**created, "description": created.get("description", "Created"), "headers": {
        **created.get("headers", {}),
        REPLAYED: {"description": "`true` when this is the kept answer of an earlier request"
                   " with the same Idempotency-Key (nothing was created this time)",
                   "schema": {"type": "string", "enum": ["true"]}}}}
    for status, text in ((409, "Idempotency-Key: the first request with this key is still"
                               " running (retry after Retry-After)"),
                         (422, "Idempotency-Key: the key was used for a different request")):
        if status in out:
            out[status] = {**out[status], "description": f"{out[status]['description']}; or"
                           f" {text[0].lower()}{text[1:]}"}
        else:
            out[status] = {"description": text, **PROBLEM}
    return out


class Digesting:
    """Passes a body's chunks on, counting and hashing them."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks
        self.size = 0
        self._sha = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self.size += len(chunk)
            self._sha.update(chunk)
            yield chunk

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


async def digest(chunks: AsyncIterable[bytes]) -> tuple[int, str]:
    """Size and sha256 of a body read to its end (a repeat's bytes, compared, then dropped)."""
    d = Digesting(chunks)
    async for _ in d:
        pass
    return d.size, d.sha256


def replay(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status,
                    headers={**answer.headers, REPLAYED: "true"})


async def idempotent(idem: Idempotency, app_id: UUID, key: str | None, endpoint: str,
                     fingerprint: str | None,
                     run: Callable[[], Awaitable[tuple[Response, str]]],
                     repeat_fingerprint: Callable[[], Awaitable[str]] | None = None
                     ) -> Response:
    """``run()`` once per key: the first request runs it and its answer (below 400) is kept;
    a repeat gets that answer. ``fingerprint`` None (an upload): a repeat's is made by
    ``repeat_fingerprint()``, which reads its body."""
    if key is None:
        return (await run())[0]
    begun = await idem.begin(app_id, key, endpoint, fingerprint)
    if begun.answer is not None:
        if fingerprint is None:
            assert repeat_fingerprint is not None
            idem.check_same(begun.answer, await repeat_fingerprint())
        return replay(begun.answer)
    owner = begun.owner
    assert owner is not None
    try:
        async with idem.holding(app_id, key, owner):
            response, made = await run()
    except BaseException:
        # shielded: a request cancelled (its client gone) still frees its key
        await asyncio.shield(_release(idem, app_id, key, owner))
        raise
    if response.status_code >= 400:
        await _release(idem, app_id, key, owner)
        return response
    body = getattr(response, "body", b"")
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _NOT_KEPT}
    try:
        await idem.keep(app_id, key, owner, made, response.status_code, headers, bytes(body))
    except Exception as e:  # the work is done: answer it; the lease frees the key later
        log.warning("could not keep the answer for Idempotency-Key %r: %s", key, e)
    return response


async def _release(idem: Idempotency, app_id: UUID, key: str, owner: UUID) -> None:
    try:
        await idem.release(app_id, key, owner)
    except Exception as e:  # Postgres gone: the lease frees the key when it ends
        log.warning("could not release Idempotency-Key %r: %s", key, e)
