"""Transforms on request (issue 21): the libvips engine against naive Pillow, and the profile
derivatives (Pillow today) against the same job on libvips.

    python bench/transforms.py [--rounds 5] [--per-round 48] [--threads 8]

One 12-megapixel JPEG (4000x3000, gradients plus noise, quality 90: thumbnails.py's source) is
rendered by every engine below, each in a process of its own (so its peak RSS is its own) with
a pool of ``--threads`` threads (libvips and Pillow both release the GIL while they work). The
parent runs the engines in paired rounds: in each round every engine renders ``--per-round``
times, in an order that rotates from round to round, and the ratios are taken per round and
their median reported, so the VM's drift moves both sides of a ratio alike.

Engines (all contain inside the box, WebP quality 80 unless said):

  vips        app.media.transform.render, 512 px box, from the file (shrink-on-load)
  naive       Image.open + thumbnail((512, 512)) + save WebP: the issue's "naive Pillow"
              (thumbnail() asks libjpeg for draft mode itself: decodes at 1/2 scale here)
  naive_exif  the same with ImageOps.exif_transpose first, as a server must: the full 12 MP
              decode (thumbnails.py's "naive")
  deriv       app.media.derivatives.build_derivative, 512x512 (the profile derivatives today)
  deriv_200   build_derivative 200x200 WebP;  vips_200: the libvips engine for the same
  deriv_set   build_all with three derivatives (200x200 cover WebP, 800x800 WebP,
              1600x1600 JPEG q85): one decode for all three;  vips_set: three libvips renders

Targets: vips >= 3x naive renders/s (issue 21). Peak RSS is the engine's process (pool and
imports included) sampled every 5 ms. Writes bench/results/transforms.json.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from _common import RESULTS, machine, write_json
from thumbnails import SIZE, make_source

IMGPROXY_REQ_S = 79.6  # imgproxy's published k6 run, JPEG -> 512 px, 2 vCPUs (another machine)
TARGET = 3.0
MAX_PIXELS = 40_000_000
ENGINES = {
    "vips": "libvips transform.render, 512 px WebP",
    "naive": "naive Pillow: open + thumbnail(512) + save WebP",
    "naive_exif": "naive Pillow + exif_transpose (full decode)",
    "deriv": "build_derivative (Pillow) 512 px WebP",
    "vips_200": "libvips transform.render, 200 px WebP",
    "deriv_200": "build_derivative (Pillow) 200 px WebP",
    "vips_set": "libvips: 3 renders (200 cover, 800, 1600 JPEG)",
    "deriv_set": "build_all (Pillow): the same 3, one decode",
}
PAIRS = [  # (numerator, denominator, what it answers)
    ("vips", "naive", "target: transforms vs naive Pillow (>= 3x)"),
    ("vips", "naive_exif", "transforms vs naive Pillow that applies orientation"),
    ("vips", "deriv", "512 px: libvips vs today's derivative engine"),
    ("vips_200", "deriv_200", "200 px: libvips vs today's derivative engine"),
    ("vips_set", "deriv_set", "a profile's 3 derivatives: libvips vs today's engine"),
]


def _job(engine: str) -> Any:
    """The function one render of ``engine`` runs, built in the engine's own process."""
    from PIL import Image, ImageOps

    if engine.startswith("vips"):
        from app.media.transform import TransformLimits, TransformSpec, render

        limits = TransformLimits()

        def vips_spec(**p: Any) -> Any:
            return TransformSpec.parse(p, limits)

        if engine == "vips_set":
            specs = [vips_spec(w=200, h=200, fit="cover"), vips_spec(w=800, h=800),
                     vips_spec(w=1600, h=1600, format="jpeg", q=85)]
            return lambda path: sum(len(render(path, s, max_pixels=MAX_PIXELS).data)
                                    for s in specs)
        size = 200 if engine == "vips_200" else 512
        spec = vips_spec(w=size, h=size)
        return lambda path: len(render(path, spec, max_pixels=MAX_PIXELS).data)
    if engine.startswith("deriv"):
        from app.media.derivatives import DerivativeSpec, build_all, build_derivative
        from app.media.render import allow_pixels

        allow_pixels(MAX_PIXELS)
        if engine == "deriv_set":
            specs = {"thumb": DerivativeSpec(width=200, height=200, fit="cover"),
                     "medium": DerivativeSpec(width=800, height=800),
                     "large": DerivativeSpec(width=1600, height=1600, format="jpeg",
                                             quality=85)}
            return lambda path: sum(r.size for r in build_all(
                path, specs, max_pixels=MAX_PIXELS).values())
        size = 200 if engine == "deriv_200" else 512
        one = DerivativeSpec(width=size, height=size)
        return lambda path: build_derivative(path, one, max_pixels=MAX_PIXELS).size

    def naive(path: str) -> int:
        with Image.open(path) as im:
            if engine == "naive_exif":
                im = ImageOps.exif_transpose(im)
            im.thumbnail((512, 512))
            out = io.BytesIO()
            im.save(out, "WEBP", quality=80)
        return len(out.getvalue())

    return naive


def engine_process(engine: str, path: str, threads: int, conn: Any) -> None:
    """Waits for ("run", n); renders n times over `threads` threads; answers the seconds."""
    job = _job(engine)
    with ThreadPoolExecutor(threads, thread_name_prefix=engine) as pool:
        list(pool.map(job, [path] * threads))  # warm-up: imports, first decode, every thread
        conn.send(("ready", None))
        while True:
            kind, n = conn.recv()
            if kind != "run":
                break
            started = time.perf_counter()
            sizes = list(pool.map(job, [path] * n))
            conn.send(("done", (time.perf_counter() - started, sizes[0])))
    conn.close()


class Engine:
    def __init__(self, name: str, path: Path, threads: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=engine_process, args=(name, str(path), threads, child))
        self.proc.start()
        child.close()
        self.ps = psutil.Process(self.proc.pid)
        self.peak = 0
        self.base = 0
        self.seconds: list[float] = []
        self.output_bytes = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.005)

    def ready(self) -> None:
        kind, _ = self.conn.recv()
        assert kind == "ready"
        self.base = self.ps.memory_info().rss  # after imports and the warm-up

    def run(self, n: int) -> float:
        self.conn.send(("run", n))
        kind, (seconds, size) = self.conn.recv()
        assert kind == "done"
        self.seconds.append(seconds)
        self.output_bytes = size
        return n / seconds

    def close(self) -> None:
        try:
            self.conn.send(("stop", 0))
        except OSError:
            pass
        self.proc.join(30)
        self._stop.set()
        self._sampler.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=48, help="renders per engine per round")
    parser.add_argument("--threads", type=int, default=8, help="concurrent workers (8)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {', '.join(ENGINES)}")
    parser.add_argument("--json", type=Path, default=RESULTS / "transforms.json")
    args = parser.parse_args(argv)
    names = [n for n in args.engines.split(",") if n]
    unknown = set(names) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")
    info = machine()

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "12mp.jpg"
        make_source(source)
        source_bytes = source.stat().st_size
        print(f"source: {SIZE[0]}x{SIZE[1]} JPEG q90, {source_bytes / 2**20:.1f} MiB; "
              f"{args.threads} threads per engine, {args.rounds} rounds of {args.per_round} "
              f"renders; {os.cpu_count()} CPUs, load {info['loadavg_1m_at_start']}")
        engines = {n: Engine(n, source, args.threads) for n in names}
        try:
            for e in engines.values():
                e.ready()
            rates: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    rates[n].append(engines[n].run(args.per_round))
                print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f}/s" for n in names))
        finally:
            for e in engines.values():
                e.close()

    rows = []
    for n in names:
        e = engines[n]
        rows.append({
            "engine": n, "label": ENGINES[n], "threads": args.threads,
            "renders_per_s_median": round(statistics.median(rates[n]), 2),
            "renders_per_s_rounds": [round(x, 2) for x in rates[n]],
            "peak_rss_mib": round(e.peak / 2**20, 1),
            "rss_after_warmup_mib": round(e.base / 2**20, 1),
            "output_bytes": e.output_bytes,
        })
    ratios = []
    for a, b, what in PAIRS:
        if a in rates and b in rates:
            per_round = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
            ratios.append({"a": a, "b": b, "what": what,
                           "median_ratio": round(statistics.median(per_round), 2),
                           "per_round": [round(x, 2) for x in per_round]})
    target = next((x for x in ratios if x["a"] == "vips" and x["b"] == "naive"), None)

    print()
    print("| engine | renders/s (median) | peak RSS MiB | output bytes |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['label']} | {row['renders_per_s_median']} | {row['peak_rss_mib']} | "
              f"{row['output_bytes']} |")
    print()
    print("| ratio | median of per-round ratios | rounds |")
    print("|---|---|---|")
    for x in ratios:
        print(f"| {x['a']} / {x['b']}: {x['what']} | {x['median_ratio']}× | "
              f"{', '.join(str(v) for v in x['per_round'])} |")
    met = None
    if target is not None:
        met = target["median_ratio"] >= TARGET
        print(f"\ntarget renders >= {TARGET}x naive Pillow: {target['median_ratio']}x -> "
              f"{'met' if met else 'NOT met'}")
    if "vips" in rates:
        print(f"libvips renders/s here: {statistics.median(rates['vips']):.1f} on "
              f"{os.cpu_count()} CPUs; imgproxy publishes {IMGPROXY_REQ_S} req/s on 2 vCPUs "
              "(its own k6 run, another machine, HTTP included)")

    write_json(args.json, {
        "machine": info,
        "source": {"width": SIZE[0], "height": SIZE[1], "format": "JPEG", "quality": 90,
                   "bytes": source_bytes},
        "threads": args.threads, "rounds": args.rounds, "per_round": args.per_round,
        "vips_concurrency": os.environ.get("VIPS_CONCURRENCY", "1 (transform.py's default)"),
        "results": rows, "ratios": ratios,
        "target": {"what": "vips renders/s >= 3x naive Pillow", "ratio": TARGET,
                   "measured": target["median_ratio"] if target else None, "met": met},
        "imgproxy_published_req_per_s_2vcpu": IMGPROXY_REQ_S,
    })
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
