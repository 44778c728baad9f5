"""Attempts at an attachment's background work, kept in Postgres (table attachment_work).

Redis carries jobs and forgets them; how often a piece of work was tried, why it last failed
and when it may run again is the truth the sweep and the dashboard need, so it lives here.
Each attempt is counted before it starts (a timeout or a SIGKILL cannot skip the count), its
deadline grows with the file's size, and a promotion that used up its attempts gives up: the
attachment becomes ``failed`` (``timeout`` when the last attempt ran out of time) instead of
copying the whole file again forever. Deletion work never gives up (the files must go); it
keeps its last error for the dashboard and waits longer between tries.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app.config import Settings

PROMOTE = "promote"
REPROCESS = "reprocess"
DESTROY = "destroy"
PURGE_CACHE = "purge_cache"
KINDS = frozenset({PROMOTE, REPROCESS, DESTROY, PURGE_CACHE})
# work that ends with the attachment failed when it cannot be done
GIVES_UP = frozenset({PROMOTE, REPROCESS})

# seconds before the next attempt, by attempts made so far (last one repeats)
BACKOFF = (2, 5, 15, 30, 60, 300, 900, 3600)
# seconds between attempts at work that a storage cannot take (full, not writable): an
# operator's fix is picked up within this, and the attempts are not used up meanwhile
BLOCKED_RETRY = 60


@dataclass(frozen=True)
class Attempt:
    kind: str
    attachment_id: UUID
    number: int             # this attempt's number, from 1
    deadline: float         # seconds this attempt may take
    last_error: str | None  # of the previous attempt
    timed_out: bool         # the previous attempt ran out of time
    exhausted: bool         # attempts used up: give up instead of trying


def deadline_for(settings: Settings, size: int | None) -> float:
    """The base job timeout plus the time to move the file at a slow but healthy rate:
    a 5 GiB file between a filesystem cache and a remote S3 store needs far more than the
    60 s a thumbnail does."""
    seconds = settings.job_timeout + (size or 0) / settings.job_min_throughput
    return float(min(seconds, settings.job_timeout_max))


def backoff(attempts: int) -> int:
    return BACKOFF[min(max(attempts, 1) - 1, len(BACKOFF) - 1)]


async def begin(conn: asyncpg.Connection, settings: Settings, kind: str,
                att_id: UUID) -> Attempt | None:
    """Count an attempt at `kind` on the attachment; None when the attachment is gone.

    The count restarts when the attachment's generation moved on (a new upload into the
    attachment's place, a reprocess asked for again)."""
    row = await conn.fetchrow(
        "WITH a AS (SELECT id, generation, size FROM attachments WHERE id = $1),"
        " w AS ("
        "  INSERT INTO attachment_work AS w (attachment_id, kind, generation, attempts,"
        "                                    started_at, updated_at)"
        "  SELECT id, $2, generation, 1, now(), now() FROM a"
        "  ON CONFLICT (attachment_id, kind) DO UPDATE SET"
        "   attempts = CASE WHEN w.generation = EXCLUDED.generation THEN w.attempts + 1"
        "                   ELSE 1 END,"
        "   last_error = CASE WHEN w.generation = EXCLUDED.generation THEN w.last_error END,"
        "   timed_out = w.timed_out AND w.generation = EXCLUDED.generation,"
        "   generation = EXCLUDED.generation, started_at = now(), updated_at = now()"
        "  RETURNING attempts, last_error, timed_out)"
        " SELECT a.size, w.attempts, w.last_error, w.timed_out FROM a, w",
        att_id, kind,
    )
    if row is None:
        return None
    exhausted = kind in GIVES_UP and row["attempts"] > settings.job_max_attempts
    return Attempt(kind, att_id, row["attempts"], deadline_for(settings, row["size"]),
                   row["last_error"], row["timed_out"], exhausted)


async def failed(conn: asyncpg.Connection, attempt: Attempt, error: str, *,
                 timed_out: bool, counts: bool = True) -> int:
    """Record why the attempt failed; returns the seconds until the next may start.

    An attempt that does not count (a storage could not take the work: disk full, folder not
    writable) is given back: waiting for an operator must not use up the attempts and fail a
    good upload. It is tried again every BLOCKED_RETRY seconds instead."""
    delay = backoff(attempt.number) if counts else BLOCKED_RETRY
    await conn.execute(
        "UPDATE attachment_work SET last_error = $3, timed_out = $4, updated_at = now(),"
        " next_attempt_at = now() + make_interval(secs => $5), attempts = attempts - $6"
        " WHERE attachment_id = $1 AND kind = $2",
        attempt.attachment_id, attempt.kind, error[:2000], timed_out, delay,
        0 if counts else 1,
    )
    return delay


async def done(conn: asyncpg.Connection, kind: str, att_id: UUID) -> None:
    await conn.execute("DELETE FROM attachment_work WHERE attachment_id = $1 AND kind = $2",
                       att_id, kind)


async def of_attachment(conn: asyncpg.Connection, att_id: UUID) -> list[asyncpg.Record]:
    """Pending or failing work on one attachment, for the dashboard."""
    return await conn.fetch(
        "SELECT kind, attempts, last_error, timed_out, started_at, next_attempt_at"
        " FROM attachment_work WHERE attachment_id = $1 ORDER BY kind", att_id)


def give_up_error(attempt: Attempt) -> tuple[str, str]:
    """(error.code, error.detail) of an attachment whose work used up its attempts."""
    tries = attempt.number - 1
    if attempt.timed_out:
        return "timeout", (f"gave up after {tries} attempts; the last one ran out of time"
                           f" ({attempt.last_error})")
    return "retries_exhausted", f"gave up after {tries} attempts: {attempt.last_error}"
