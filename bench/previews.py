"""Previews of PDFs and videos through one worker thread: rate and peak memory.

    python bench/previews.py [--count 20] [--seconds 30]

Makes a 10-page PDF (Letter pages, each with 400 filled vector rectangles, written by PDFium)
and a 30 s 1080p H.264 video (25 fps, a keyframe every 2 s, frames that change,
encoded with PyAV), then previews each `count` times, one after another, in a fresh process
per file: app.media.previews.build_preview, what a promotion runs in the worker's derivatives
pool, with a profile of two derivatives (200x200 WebP contain, 64x64 JPEG cover) plus the
ThumbHash. One preview at a time is one worker thread; a worker runs as many as its pool has
threads (PDFs one at a time: PDFium is not thread-safe).

Peak RSS is the process's VmHWM (its own high-water mark; ru_maxrss would include the parent's
before exec). "limit" is what issue 22 asks: a preview's memory bounded (a 4K or 30 s 1080p
video must not need GBs); the rate has no target yet. Prints a table and writes
bench/results/previews.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pdf, mp4 = Path(tmp) / "ten.pdf", Path(tmp) / "video.mp4"
        make_pdf(pdf)
        make_video(mp4, args.seconds)
        results = {
            "10-page PDF": run(pdf, "application/pdf", args.count),
            f"{args.seconds} s 1080p H.264": run(mp4, "video/mp4", args.count),
        }
    print(f"{'file':<20} {'size':>9} {'previews/s':>11} {'median ms':>10} {'base MiB':>9}"
          f" {'peak MiB':>9}  memory (<{RSS_LIMIT_MIB} MiB)")
    for name, r in results.items():
        met = "met" if r["peak_mib"] < RSS_LIMIT_MIB else "NOT met"
        print(f"{name:<20} {r['size']:>9} {r['per_second']:>11.1f} {r['median_ms']:>10.1f}"
              f" {r['base_mib']:>9.1f} {r['peak_mib']:>9.1f}  {met}")
    for name, r in results.items():
        print(f"  {name}: {r['metadata']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"count": args.count, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
