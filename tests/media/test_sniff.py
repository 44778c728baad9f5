"""The indexed sniff gives exactly what puremagic gives, signature by signature."""

from __future__ import annotations

import random
from typing import Any

import puremagic
import pytest

from app.media import sniff

PM = puremagic.main


def both(data: bytes) -> tuple[Any, Any]:
    def run(fn: Any) -> Any:
        try:
            return fn(data)
        except puremagic.PureError:
            return "no match"
    return run(sniff._identify), run(puremagic.magic_string)


def with_signature(row: Any, rng: random.Random, size: int = 512) -> bytes:
    """``size`` random bytes with the signature where it belongs (from the end if negative)."""
    data = bytearray(rng.randbytes(max(size, abs(row.offset) + len(row.byte_match))))
    start = row.offset if row.offset >= 0 else len(data) + row.offset
    data[start:start + len(row.byte_match)] = row.byte_match
    return bytes(data)


def test_the_index_is_in_use() -> None:
    assert sniff._INDEX is not None
    assert len(sniff._INDEX) < len(PM.magic_header_array)


def test_every_header_signature_matches_as_puremagic_does() -> None:
    rng = random.Random(7)
    rows = PM.magic_header_array
    for row in rows:
        data = with_signature(row, rng)
        ours, theirs = both(data)
        assert ours == theirs, row
        assert ours != "no match", row  # the signature itself was found


def test_multi_part_and_footer_signatures_match_as_puremagic_does() -> None:
    rng = random.Random(11)
    heads = {row.byte_match: row for row in PM.magic_header_array}
    cases = 0
    for first, rows in PM.multi_part_dict.items():
        head = heads.get(first)
        if head is None:
            continue
        for row in rows:
            data = bytearray(with_signature(head, rng, 2048))
            start = row.offset if row.offset >= 0 else len(data) + row.offset
            data[start:start + len(row.byte_match)] = row.byte_match
            ours, theirs = both(bytes(data))
            assert ours == theirs, (head, row)
            cases += 1
    for row in PM.magic_footer_array:
        ours, theirs = both(with_signature(row, rng))
        assert ours == theirs, row
        cases += 1
    assert cases > 20


@pytest.mark.parametrize("data", [
    b"\0" * 10240, b"hello world\n" * 800, b'{"a": [1, 2]}', b"<svg xmlns='x'></svg>",
    b"%PDF-1.7\n" + b"x" * 100, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"PK\x03\x04" + b"\0" * 64,
    b"x", b"",
])
def test_ordinary_heads_sniff_the_same_with_and_without_the_index(
        data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    if data:
        ours, theirs = both(data)
        assert ours == theirs
    indexed = sniff.sniff_mime(data)
    monkeypatch.setattr(sniff, "_INDEX", None)
    assert sniff.sniff_mime(data) == indexed


def test_random_heads_match_as_puremagic_does() -> None:
    rng = random.Random(3)
    for _ in range(300):
        data = rng.randbytes(rng.randint(1, 4096))
        ours, theirs = both(data)
        assert ours == theirs


def test_heads_with_two_signatures_keep_puremagics_order() -> None:
    """Two matches of equal length at different offsets tie on confidence: which one wins
    then depends on the order of puremagic's list, which the index must keep."""
    rng = random.Random(5)
    rows = [r for r in PM.magic_header_array if r.offset >= 0]
    pairs = 0
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if (len(a.byte_match) != len(b.byte_match) or a.offset == b.offset
                    or a.offset < b.offset + len(b.byte_match) <= a.offset + len(a.byte_match)
                    or b.offset < a.offset + len(a.byte_match) <= b.offset + len(b.byte_match)):
                continue
            data = bytearray(with_signature(b, rng))
            data[a.offset:a.offset + len(a.byte_match)] = a.byte_match
            ours, theirs = both(bytes(data))
            assert ours == theirs, (a, b)
            pairs += 1
            if pairs >= 3000:
                return
    assert pairs > 100
