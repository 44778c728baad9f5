"""Previews of PDFs and videos through one worker: rate and peak memory.

    python bench/previews.py [--count 20] [--seconds 30] [--worker-count 20]

Makes a 10-page PDF (Letter pages, each with 400 filled vector rectangles, written by PDFium)
and a 30 s 1080p H.264 video (25 fps, a keyframe every 2 s, frames that change, encoded with
PyAV), then measures two things for each, with a profile of two derivatives (200x200 WebP
contain, 64x64 JPEG cover) plus the ThumbHash:

1. the preview step alone: app.media.previews.build_preview, what a promotion runs in the
   worker's derivatives pool, `--count` times one after another in a fresh process per file
   (one preview at a time: one pool thread). Peak RSS is that process's VmHWM (ru_maxrss
   would include the parent's before exec).
2. through one worker: `stowage serve` and ONE `stowage worker` on a fresh database (file
   storage), `--worker-count` uploads of the file with promote=false, then every promote at
   once; previews/s = stored / time until Postgres says all are stored. Each promotion also
   copies the file into the store and writes the derivatives. Peak RSS is the worker's VmHWM.

"limit" is what issue 22 asks: memory bounded (a 30 s 1080p video must not need GBs); the rate
has no target yet. Prints a table and writes bench/results/previews.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import DEFAULT_PG, DEFAULT_REDIS, start_stowage, terminate_cleanly
from promotions import promote_all, wait_stored

PROFILES = """
[profiles.media]
types = ["image/*", "application/pdf", "video/mp4"]
[profiles.media.derivatives.thumb]
width = 200
height = 200
[profiles.media.derivatives.square]
width = 64
height = 64
fit = "cover"
format = "jpeg"
"""

RESULTS = Path(__file__).resolve().parent / "results" / "previews.json"
RSS_LIMIT_MIB = 300  # a worker thread's preview: far below "GBs"

CHILD = r"""
import json, sys, time
from app.media.derivatives import DerivativeSpec
from app.media.previews import build_preview

path, mime, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
specs = {"thumb": DerivativeSpec(width=200, height=200),
         "square": DerivativeSpec(width=64, height=64, fit="cover", format="jpeg")}
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
base = hwm()
build_preview(path, mime, specs, max_pixels=None)  # warm-up: imports, first open
times = []
for _ in range(count):
    t = time.perf_counter()
    made = build_preview(path, mime, specs, max_pixels=None)
    times.append(time.perf_counter() - t)
assert made.derivatives["thumb"].width > 0 and made.metadata["thumbhash"]
print(json.dumps({"times": times, "base_mib": base, "peak_mib": hwm(),
                  "metadata": {k: v for k, v in made.metadata.items() if k != "thumbhash"}}))
"""


def make_pdf(path: Path, pages: int = 10) -> None:
    import pypdfium2 as pdfium
    import pypdfium2.raw as c

    doc = pdfium.PdfDocument.new()
    for p in range(pages):
        page = doc.new_page(612, 792)
        for i in range(400):
            x, y = (i * 37 + p * 11) % 560, (i * 53 + p * 7) % 740
            rect = c.FPDFPageObj_CreateNewRect(x, y, 40 + i % 30, 30 + i % 20)
            c.FPDFPageObj_SetFillColor(rect, (i * 7) % 256, (i * 13) % 256, (i * 29) % 256, 200)
            c.FPDFPath_SetDrawMode(rect, c.FPDF_FILLMODE_ALTERNATE, True)
            c.FPDFPage_InsertObject(page, rect)
        c.FPDFPage_GenerateContent(page)
        page.close()
    doc.save(str(path))
    doc.close()


def make_video(path: Path, seconds: int) -> None:
    import av
    from PIL import Image

    fps, size = 25, (1920, 1080)
    gradient = Image.linear_gradient("L").resize(size)
    frames = []
    for k in range(fps):  # a second of distinct frames, cycled
        shifted = gradient.transform(size, Image.Transform.AFFINE, (1, 0, k * 40, 0, 1, 0))
        im = Image.merge("RGB", (shifted, gradient, Image.new("L", size, (k * 10) % 256)))
        frames.append(av.VideoFrame.from_image(im))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = 2 * fps
        stream.options = {"preset": "ultrafast"}
        for i in range(seconds * fps):
            frame = frames[i % fps]
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def run(path: Path, mime: str, count: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mime, str(count)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    doc = json.loads(out.stdout)
    total = sum(doc["times"])
    doc["per_second"] = len(doc["times"]) / total
    doc["median_ms"] = sorted(doc["times"])[len(doc["times"]) // 2] * 1000
    doc["size"] = path.stat().st_size
    return doc


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def upload_cached(base: str, headers: dict[str, str], data: bytes, count: int
                        ) -> list[str]:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        ids = []
        for _ in range(count):
            r = await client.post("/v1/attachments/raw", content=data,
                                  params={"profile": "media", "promote": "false"})
            if r.status_code != 201:
                raise RuntimeError(f"upload: HTTP {r.status_code}: {r.text[:200]}")
            ids.append(r.json()["id"])
        return ids


def through_worker(files: dict[str, Path], count: int, pg: str, redis: str) -> dict:
    """Per file: `count` promotions at once through one worker (see the docstring)."""
    out = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-previews-bench-"))
        stack.callback(lambda: subprocess.run(["rm", "-rf", str(tmp)], check=False))
        (tmp / "profiles.toml").write_text(PROFILES)
        stowage = start_stowage(stack, tmp, pg, redis,
                                extra_env={"STOWAGE_PROFILES_FILE": str(tmp / "profiles.toml")})
        uploads = {name: asyncio.run(upload_cached(stowage.base, stowage.auth_header,
                                                   path.read_bytes(), count + 1))
                   for name, path in files.items()}
        worker = stowage.start_worker(stack)
        for name, ids in uploads.items():
            warm, ids = ids[:1], ids[1:]
            asyncio.run(promote_all(stowage, warm))
            asyncio.run(wait_stored(stowage.db_url, warm, 120, worker))
            t0 = time.monotonic()
            asyncio.run(promote_all(stowage, ids))
            stored, failed = asyncio.run(wait_stored(stowage.db_url, ids, 600, worker))
            elapsed = time.monotonic() - t0
            out[name] = {"count": len(ids), "stored": stored, "failed": failed,
                         "seconds": round(elapsed, 2), "per_second": stored / elapsed,
                         "worker_peak_mib": vm_hwm_mib(worker.pid)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--worker-count", type=int, default=20,
                        help="promotions per file through the worker (0: skip that part)")
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, terminate_cleanly():
        files = {"10-page PDF": Path(tmp) / "ten.pdf",
                 f"{args.seconds} s 1080p H.264": Path(tmp) / "video.mp4"}
        pdf, mp4 = files.values()
        make_pdf(pdf)
        make_video(mp4, args.seconds)
        results = {name: run(path, mime, args.count)
                   for (name, path), mime in zip(files.items(), ("application/pdf", "video/mp4"),
                                                 strict=True)}
        worker = (through_worker(files, args.worker_count, args.pg, args.redis)
                  if args.worker_count else {})
    print(f"preview step alone ({args.count} each, one at a time, fresh process per file):")
    print(f"{'file':<20} {'size':>9} {'previews/s':>11} {'median ms':>10} {'base MiB':>9}"
          f" {'peak MiB':>9}  memory (<{RSS_LIMIT_MIB} MiB)")
    for name, r in results.items():
        met = "met" if r["peak_mib"] < RSS_LIMIT_MIB else "NOT met"
        print(f"{name:<20} {r['size']:>9} {r['per_second']:>11.1f} {r['median_ms']:>10.1f}"
              f" {r['base_mib']:>9.1f} {r['peak_mib']:>9.1f}  {met}")
    for name, r in results.items():
        print(f"  {name}: {r['metadata']}")
    if worker:
        print(f"\nthrough one worker ({args.worker_count} promotions each, all at once):")
        print(f"{'file':<20} {'stored':>7} {'failed':>7} {'seconds':>8} {'previews/s':>11}"
              f" {'worker peak MiB':>16}  memory (<{RSS_LIMIT_MIB} MiB)")
        for name, r in worker.items():
            met = "met" if r["worker_peak_mib"] < RSS_LIMIT_MIB else "NOT met"
            print(f"{name:<20} {r['stored']:>7} {r['failed']:>7} {r['seconds']:>8.2f}"
                  f" {r['per_second']:>11.1f} {r['worker_peak_mib']:>16.1f}  {met}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"count": args.count, "results": results,
                                   "through_worker": worker}, indent=2) + "\n")


if __name__ == "__main__":
    main()
