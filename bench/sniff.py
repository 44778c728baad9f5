#!/usr/bin/env python3
"""Sniffing cost: app.media.sniff's index over puremagic's tables against puremagic's public call.

    python bench/sniff.py [--rounds 15] [--reps 200]

app.media.sniff keeps an index of puremagic's signature tables (which are not puremagic's
public API) so one upload's head is matched with ~140 dict lookups instead of ~1,400
comparisons. That coupling stays only while this measures a large gain. Both ways are run on
the same heads, of the kinds uploads bring (JPEG, PNG, WebP, GIF, PDF, ZIP, MP4, text, HTML,
random bytes), each cut to what an upload sniffs (app.media.sniff.SNIFF_BYTES) and to 10 KiB
(a small upload); they must give the same type for every head. Rounds alternate the two ways
(paired: this VM drifts), and the verdict is the median of the per-round ratios.

Prints a table and writes bench/results/sniff.json (--json elsewhere).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import RESULTS, machine, write_json
from PIL import Image

from app.media import sniff

DEFAULT_JSON = RESULTS / "sniff.json"
TARGET = 2.0  # the index must be at least this many times faster to be worth the coupling


def _image(fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((400, 300), 60).convert("RGB").save(buf, fmt, **options)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", os.urandom(20_000))
    return buf.getvalue()


def heads() -> dict[str, bytes]:
    files = {
        "jpeg": _image("JPEG", quality=90),
        "png": _image("PNG"),
        "webp": _image("WEBP"),
        "gif": _image("GIF"),
        "pdf": b"%PDF-1.7\n" + os.urandom(70_000),
        "zip": _zip(),
        "mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + os.urandom(70_000),
        "text": b"hello, stowage\n" * 5_000,
        "html": b"<!DOCTYPE html><html><body>" + b"<p>x</p>" * 9_000 + b"</body></html>",
        "random": os.urandom(70_000),
    }
    out = {}
    for name, data in files.items():
        out[f"{name} {sniff.SNIFF_BYTES // 1024} KiB"] = data[:sniff.SNIFF_BYTES]
        out[f"{name} 10 KiB"] = data[:10 * 1024]
    return out


def public(head: bytes) -> str:
    """sniff_mime as it is without the index (what it falls back to)."""
    index, sniff._INDEX = sniff._INDEX, None
    try:
        return sniff.sniff_mime(head)
    finally:
        sniff._INDEX = index


def timed(fn: Callable[[bytes], str], samples: list[bytes], reps: int) -> float:
    """Seconds per call, over every sample."""
    started = time.perf_counter()
    for _ in range(reps):
        for head in samples:
            fn(head)
    return (time.perf_counter() - started) / (reps * len(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds (15)")
    parser.add_argument("--reps", type=int, default=200, help="passes over the heads per round")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()

    if sniff._INDEX is None:
        raise SystemExit("app.media.sniff has no index (puremagic's tables moved): nothing to"
                         " compare")
    samples = heads()
    differ = {name: (sniff.sniff_mime(h), public(h)) for name, h in samples.items()
              if sniff.sniff_mime(h) != public(h)}
    if differ:
        raise SystemExit(f"the index and puremagic disagree: {differ}")
    data = list(samples.values())
    index_s, public_s, ratios = [], [], []
    for i in range(args.rounds):
        order = [("index", sniff.sniff_mime), ("public", public)]
        if i % 2:
            order.reverse()
        got = {name: timed(fn, data, args.reps) for name, fn in order}
        index_s.append(got["index"])
        public_s.append(got["public"])
        ratios.append(got["public"] / got["index"])
    speedup = statistics.median(ratios)
    per_kind = {name: {"index_us": timed(sniff.sniff_mime, [h], args.reps) * 1e6,
                       "public_us": timed(public, [h], args.reps) * 1e6}
                for name, h in samples.items()}
    print("| head | index µs | public puremagic µs | ratio |")
    print("|---|---:|---:|---:|")
    for name, r in per_kind.items():
        print(f"| {name} | {r['index_us']:.1f} | {r['public_us']:.1f}"
              f" | {r['public_us'] / r['index_us']:.1f}× |")
    index_us = statistics.median(index_s) * 1e6
    public_us = statistics.median(public_s) * 1e6
    print(f"\nmedian per sniff: index {index_us:.1f} µs, public puremagic {public_us:.1f} µs;"
          f" paired speedup {speedup:.1f}× over {args.rounds} rounds (target ≥ {TARGET:g}×)")
    write_json(args.json, {
        "benchmark": "sniff", "machine": machine(),
        "params": {"rounds": args.rounds, "reps": args.reps, "heads": list(samples)},
        "index_us": index_us, "public_us": public_us, "speedup": speedup,
        "ratios": ratios, "per_head": per_kind,
        "target": {"speedup": TARGET, "passed": speedup >= TARGET},
    })


if __name__ == "__main__":
    main()
