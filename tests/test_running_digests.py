"""The in-process hash states of tus uploads: valid at exactly one offset, bounded."""

from __future__ import annotations

import hashlib
import uuid

from app.uploads.running_digests import RunningDigests


def test_a_state_is_handed_back_only_at_its_offset_and_only_once():
    digests = RunningDigests()
    upload = uuid.uuid4()
    h = hashlib.sha256(b"abc")
    digests.keep(upload, 3, h)
    assert digests.take(upload, 4) is None  # another offset: unknown here...
    assert digests.take(upload, 3) is None  # ...and the stale state is gone
    digests.keep(upload, 3, h)
    assert digests.take(upload, 3) is h
    assert digests.take(upload, 3) is None  # the caller owns it now


def test_offset_zero_starts_a_fresh_hash():
    h = RunningDigests().take(uuid.uuid4(), 0)
    assert h is not None and h.hexdigest() == hashlib.sha256().hexdigest()


def test_the_oldest_states_are_dropped_beyond_capacity():
    digests = RunningDigests(capacity=2)
    a, b, c = (uuid.uuid4() for _ in range(3))
    for u in (a, b):
        digests.keep(u, 1, hashlib.sha256(b"x"))
    digests.keep(a, 2, hashlib.sha256(b"xy"))  # a is now the most recent
    digests.keep(c, 1, hashlib.sha256(b"x"))
    assert len(digests) == 2
    assert digests.take(b, 1) is None
    assert digests.take(a, 2) is not None and digests.take(c, 1) is not None


def test_forget():
    digests = RunningDigests()
    upload = uuid.uuid4()
    digests.keep(upload, 5, hashlib.sha256(b"12345"))
    digests.forget(upload)
    assert digests.take(upload, 5) is None
