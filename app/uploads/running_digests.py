"""SHA-256 states of resumable uploads, kept in this process between their requests.

A tus upload arrives in many PATCHes. Hashing each PATCH's bytes as they arrive and keeping
the hash state here lets the completion skip reading the whole file back (which, after the
write-behind hint dropped it from the page cache, comes from disk: about half the time of a
256 MiB upload).

Only an optimisation: a state is valid at exactly one offset, the upload's durable one, and
is used only when the next request resumes from that offset on this process. An upload
resumed on another API instance, after a restart, or after a PATCH that ended without
saving simply has no state here, and the completion hashes the stored bytes as before.
Bytes below a durable offset never change, so a state at the same offset is for the same
bytes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any
from uuid import UUID

# a hash state is a few hundred bytes; this bounds memory however many uploads are idle
DEFAULT_CAPACITY = 10_000


class RunningDigests:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._states: OrderedDict[UUID, tuple[int, Any]] = OrderedDict()

    def take(self, upload_id: UUID, offset: int) -> Any | None:
        """The hash of the upload's first ``offset`` bytes, removed from here (the caller
        owns it now), or None when this process does not know it."""
        state = self._states.pop(upload_id, None)
        if state is not None and state[0] == offset:
            return state[1]
        return hashlib.sha256() if offset == 0 else None

    def keep(self, upload_id: UUID, offset: int, hasher: Any) -> None:
        """Remember ``hasher`` as the hash of the upload's first ``offset`` (durable) bytes."""
        self._states[upload_id] = (offset, hasher)
        self._states.move_to_end(upload_id)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def forget(self, upload_id: UUID) -> None:
        self._states.pop(upload_id, None)

    def __len__(self) -> int:
        return len(self._states)
