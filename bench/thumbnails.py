"""Thumbnail throughput and memory: app.media.derivatives against naive Pillow.

    python bench/thumbnails.py [--count 20] [--workers N]

Makes one 12-megapixel JPEG (4000x3000, gradient plus noise, so it is not trivially
compressible), then turns it into `count` 200x200 WebP thumbnails (contain, quality 80) with:

  a  build_derivative, one process (JPEG draft mode: libjpeg decodes at 1/8 scale)
  b  naive Pillow, one process: Image.open, exif_transpose (which decodes the full image),
     thumbnail((200, 200)), save WebP - no draft mode
  b' Pillow's thumbnail() straight on the unloaded image (for reference: thumbnail() asks for
     draft mode itself when the image has not been decoded yet)
  c  build_derivative in a ProcessPoolExecutor with N workers (default: os.cpu_count())

Each mode runs in a fresh process so peak RSS is its own; RSS is sampled every 5 ms with psutil
over the whole process tree (the pool's workers included). "base" is the tree after imports (and,
for the pool, with its workers started) before any image work; "peak" is the most seen after.
Rates exclude one untimed warm-up thumbnail (per worker for the pool). Prints a table and writes
bench/results/thumbnails.json.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from PIL import Image, ImageOps

from app.media.derivatives import DerivativeSpec, build_derivative

SIZE = (4000, 3000)
SPEC = DerivativeSpec(width=200, height=200, fit="contain", format="webp", quality=80)
MAX_PIXELS = 40_000_000
RESULTS = Path(__file__).resolve().parent / "results" / "thumbnails.json"
MODES = {
    "a": "build_derivative (draft), 1 process",
    "b": "naive Pillow, no draft, 1 process",
    "b'": "Pillow thumbnail() on unloaded image",
    "c": "build_derivative, process pool",
}


def make_source(path: Path) -> None:
    """A 4000x3000 photo-like JPEG: colour gradients plus noise, quality 90 (~several MB)."""
    w, h = SIZE
    horizontal = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((w, h))
    vertical = Image.linear_gradient("L").resize((w, h))
    radial = Image.radial_gradient("L").resize((w, h))
    noise = Image.effect_noise((w, h), 48)
    rgb = Image.merge("RGB", (horizontal, vertical, radial))
    noisy = Image.merge("RGB", (noise, noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                                noise.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    Image.blend(rgb, noisy, 0.35).save(path, "JPEG", quality=90)


def derivative(path: str) -> int:
    return len(build_derivative(path, SPEC, max_pixels=MAX_PIXELS).data)


def naive(path: str) -> int:
    with Image.open(path) as opened:
        im = ImageOps.exif_transpose(opened)  # decodes all 12 MP: no draft possible after this
    im.thumbnail((SPEC.width, SPEC.height))
    out = io.BytesIO()
    im.save(out, "WEBP", quality=SPEC.quality)
    return len(out.getvalue())


def pillow_thumbnail(path: str) -> int:
    with Image.open(path) as im:
        im.thumbnail((SPEC.width, SPEC.height))  # calls draft() itself before decoding
        im = ImageOps.exif_transpose(im)
    out = io.BytesIO()
    im.save(out, "WEBP", quality=SPEC.quality)
    return len(out.getvalue())


def _noop(_: int) -> int:
    return os.getpid()


def run_mode(mode: str, path: str, count: int, workers: int, conn: Any) -> None:
    """In a fresh process: one warm-up, then `count` thumbnails, timed."""
    if mode == "c":
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_noop, range(workers * 4)))  # start every worker
            conn.send(("warm-up", None))
            list(pool.map(derivative, [path] * workers))  # warm-up: imports, first decode
            conn.send(("start", None))
            started = time.perf_counter()
            sizes = list(pool.map(derivative, [path] * count))
            elapsed = time.perf_counter() - started
    else:
        fn = {"a": derivative, "b": naive, "b'": pillow_thumbnail}[mode]
        conn.send(("warm-up", None))
        fn(path)
        conn.send(("start", None))
        started = time.perf_counter()
        sizes = [fn(path) for _ in range(count)]
        elapsed = time.perf_counter() - started
    conn.send(("done", {"elapsed": elapsed, "bytes": sizes[0]}))
    conn.close()


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(mode: str, path: Path, count: int, workers: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=run_mode, args=(mode, str(path), count, workers, child))
    proc.start()
    child.close()  # so that recv() raises EOFError if the child dies
    ps = psutil.Process(proc.pid)
    peak = {"boot": 0, "warm-up": 0, "work": 0}
    phase = ["boot"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                rss = tree_rss(ps)
            except psutil.Error:
                break
            peak[phase[0]] = max(peak[phase[0]], rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict[str, Any] = {}
    try:
        while True:
            kind, payload = parent.recv()
            if kind in ("warm-up", "start"):
                phase[0] = "work" if kind == "start" else kind
            else:
                result = payload
                break
    except EOFError:
        pass
    stop.set()
    sampler.join()
    proc.join()
    if proc.exitcode or not result:
        raise SystemExit(f"mode {mode} failed (exit code {proc.exitcode})")
    elapsed = result["elapsed"]
    return {
        "mode": mode,
        "label": MODES[mode],
        "workers": workers if mode == "c" else 1,
        "count": count,
        "seconds": round(elapsed, 3),
        "thumbs_per_s": round(count / elapsed, 2),
        "ms_per_thumb": round(elapsed / count * 1000, 1),
        "peak_rss_mb": round(max(peak["warm-up"], peak["work"]) / 2**20, 1),
        "base_rss_mb": round(peak["boot"] / 2**20, 1),
        "output_bytes": result["bytes"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="thumbnails per mode (20)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="process pool size for mode c (os.cpu_count())")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "12mp.jpg"
        started = time.perf_counter()
        make_source(source)
        print(f"source: {SIZE[0]}x{SIZE[1]} JPEG, {source.stat().st_size / 2**20:.1f} MiB "
              f"(made in {time.perf_counter() - started:.1f} s); {args.count} thumbnails per "
              f"mode, 200x200 webp q80 contain; {os.cpu_count()} CPUs")
        rows = [measure(mode, source, args.count, args.workers) for mode in MODES]
        source_bytes = source.stat().st_size

    by_mode = {row["mode"]: row for row in rows}
    speedup = by_mode["a"]["thumbs_per_s"] / by_mode["b"]["thumbs_per_s"]
    header = (f"{'':3}{'mode':40}{'workers':>8}{'thumbs/s':>10}{'ms/thumb':>10}"
              f"{'peak RSS MiB':>14}{'base RSS MiB':>14}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['mode']:3}{row['label']:40}{row['workers']:>8}{row['thumbs_per_s']:>10.2f}"
              f"{row['ms_per_thumb']:>10.1f}{row['peak_rss_mb']:>14.1f}{row['base_rss_mb']:>14.1f}")
    print(f"speedup a over b: {speedup:.1f}x (target >= 2x)"
          f"{'' if speedup >= 2 else '  <-- BELOW TARGET'}")
    print(f"pool c over a: {by_mode['c']['thumbs_per_s'] / by_mode['a']['thumbs_per_s']:.1f}x "
          f"with {args.workers} workers")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "source": {"width": SIZE[0], "height": SIZE[1], "format": "JPEG", "bytes": source_bytes},
        "spec": {"width": SPEC.width, "height": SPEC.height, "fit": SPEC.fit,
                 "format": SPEC.format, "quality": SPEC.quality},
        "count": args.count,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "pillow": Image.__version__,
        "platform": platform.platform(),
        "results": rows,
        "speedup_a_over_b": round(speedup, 2),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
