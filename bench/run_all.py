#!/usr/bin/env python3
"""Every benchmark in sequence, then one table of the issues' targets and whether each is met.

    python bench/run_all.py            # the full set (about 10-15 minutes on 2 vCPUs)
    python bench/run_all.py --quick    # fewer runs, shorter loads (about 4 minutes)

Runs, each as its own process (each cleans up after itself, also on Ctrl-C):

1. uploads.py at 1024 MiB: issue 7 (a), 1 GiB multipart and raw >= 1.5x the Node tus server
   and the server's RSS growth < 50 MiB.
2. uploads.py at 256 MiB: issue 5, tus in 8 MiB chunks, raw and multipart into Stowage and
   the Node tus server; every Stowage mode faster than the Node tus server. Each mode is
   judged against the peer driven the same way: raw and multipart (one request, curl) against
   tus-node with one PATCH (curl), Stowage tus in 8 MiB chunks against tus-node in 8 MiB
   chunks (both bench/tus_client.py); the other ratio is shown too.
3. small_uploads.py: issue 7 (b), 10 KiB uploads from 32 clients, Stowage >= the Node tus
   server in uploads/s.
4. webhook_latency.py: issue 7 (c), upload → attachment.stored webhook p99 < 250 ms.
5. promotions.py, filesystem and S3 (moto): promotions per second through one worker
   (reported; no target).
6. thumbnails.py: build_derivative against naive Pillow (its own target: >= 2x).
7. sniff.py: app.media.sniff's index over puremagic's private tables against puremagic's
   public call, paired (target >= 2x: the coupling stays only while the gain is large).

Writes bench/results/all.json (every benchmark's JSON plus the verdicts). Exit status: 0 every
target met, 1 some missed, 2 a benchmark failed to run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO, RESULTS, machine, write_json

BENCH = REPO / "bench"
DEFAULT_JSON = RESULTS / "all.json"
ISSUE5_TARGETS = "tus-node,tus-node-chunked,stowage-raw,stowage-multipart,stowage-tus"
ISSUE7_TARGETS = "tus-node,stowage-multipart,stowage-raw"


@dataclass
class Step:
    key: str
    script: str
    full: list[str]
    quick: list[str]
    json_path: Path
    own_json_flag: bool = True  # thumbnails.py always writes to its fixed path
    opt_in: bool = False  # run only when named in --only (long: scale.py builds 1 M rows)


def steps(results: Path) -> list[Step]:
    def out(name: str) -> Path:
        return results / f"all-{name}.json"

    return [
        # full: every target incl. the disk/sink references, 3 runs; quick: what the check needs
        Step("uploads_1024", "uploads.py", ["--size-mib", "1024", "--runs", "3"],
             ["--size-mib", "1024", "--runs", "1", "--targets", ISSUE7_TARGETS],
             out("uploads-1024")),
        Step("uploads_256", "uploads.py",
             ["--size-mib", "256", "--runs", "5", "--targets", ISSUE5_TARGETS],
             ["--size-mib", "256", "--runs", "1", "--targets", ISSUE5_TARGETS],
             out("uploads-256")),
        Step("small_uploads", "small_uploads.py", ["--duration", "15", "--runs", "2"],
             ["--duration", "5", "--runs", "1"], out("small-uploads")),
        Step("webhook_latency", "webhook_latency.py", ["--duration", "30"],
             ["--duration", "10"], out("webhook-latency")),
        Step("promotions", "promotions.py", ["--count", "300"], ["--count", "100"],
             out("promotions")),
        Step("thumbnails", "thumbnails.py", ["--count", "20"], ["--count", "5"],
             RESULTS / "thumbnails.json", own_json_flag=False),
        Step("sniff", "sniff.py", ["--rounds", "15"], ["--rounds", "5", "--reps", "100"],
             out("sniff")),
        # issue 20: needs Debian's clamd (scripts/test installs it); the baseline is clamd's own
        Step("scan", "scan.py", [], ["--count", "40", "--rounds", "2", "--duration", "5"],
             out("scan")),
        # issue 25: not in the default set; `--only scale` (full: 1 M rows; quick: 100 k)
        Step("scale", "scale.py", [], ["--rows", "100000", "--iterations", "100"],
             out("scale"), opt_in=True),
    ]


# --- running ---------------------------------------------------------------------------------

def run_step(step: Step, quick: bool) -> tuple[int, dict[str, Any] | None, float]:
    """Run one benchmark, its output straight to ours; its JSON if it wrote one."""
    step.json_path.unlink(missing_ok=True)  # a stale file must not pass for this run's
    cmd = [sys.executable, str(BENCH / step.script), *(step.quick if quick else step.full)]
    if step.own_json_flag:
        cmd += ["--json", str(step.json_path)]
    print(f"\n=== {step.key}: {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    # Same process group: a Ctrl-C reaches the benchmark too, which then cleans up itself;
    # we only wait for it to finish doing so.
    child = subprocess.Popen(cmd, cwd=REPO, env=env)
    try:
        code = child.wait()
    except BaseException:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # SIGTERM to us: pass it on
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise
    doc = json.loads(step.json_path.read_text()) if step.json_path.exists() else None
    return code, doc, time.monotonic() - started


# --- verdicts --------------------------------------------------------------------------------

@dataclass
class Check:
    issue: str
    what: str
    measured: str
    target: str
    met: bool | None  # None: reported only, or the benchmark did not run


def _f(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else format(value, spec) + suffix


def _row(doc: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if doc is None:
        return None
    return next((r for r in doc["results"] if r["name"] == name), None)


def _chunked_name(doc: dict[str, Any] | None, prefix: str) -> str:
    if doc is None:
        return prefix
    return next((r["name"] for r in doc["results"] if r["name"].startswith(prefix + " (")),
                prefix)


def _missing(issue: str, what: str, target: str) -> Check:
    return Check(issue, what, "did not run", target, None)


def checks_issue7a(doc: dict[str, Any] | None) -> list[Check]:
    out = []
    tus = _row(doc, "tus-node")
    for mode in ("multipart", "raw"):
        row = _row(doc, f"stowage {mode}")
        what = f"1 GiB {mode}: MB/s vs tus-node"
        if row is None or tus is None:
            out.append(_missing("7a", what, "≥ 1.50×"))
            continue
        ratio = row["vs_tus_node"]
        out.append(Check("7a", what, f"{ratio:.2f}× ({row['median_mb_s']:.0f} vs"
                                     f" {tus['median_mb_s']:.0f} MB/s)", "≥ 1.50×",
                         ratio >= 1.5))
    for mode in ("multipart", "raw"):
        row = _row(doc, f"stowage {mode}")
        what = f"1 GiB {mode}: server RSS growth (worst run)"
        if row is None:
            out.append(_missing("7a", what, "< 50 MiB"))
            continue
        growth = row["rss_growth_mib_worst"]
        out.append(Check("7a", what, f"{growth:.1f} MiB", "< 50 MiB", growth < 50))
    return out


def checks_issue7b(doc: dict[str, Any] | None) -> list[Check]:
    out = []
    tus = next((r for r in (doc or {}).get("results", []) if r["name"].startswith("tus-node")),
               None)
    client = (doc or {}).get("params", {}).get("client", "python")  # older JSON: httpx
    for mode in ("raw", "multipart"):
        row = _row(doc, f"stowage {mode}")
        what = f"10 KiB × 32 clients ({client}), {mode}: uploads/s vs tus-node"
        if row is None or tus is None:
            out.append(_missing("7b", what, "≥ 1.00×"))
            continue
        ratio = row["vs_tus_node"]
        out.append(Check("7b", what,
                         f"{ratio:.2f}× ({row['uploads_per_s']:.0f} vs"
                         f" {tus['uploads_per_s']:.0f}/s; p99 {_f(row['p99_ms'], '.0f')} vs"
                         f" {_f(tus['p99_ms'], '.0f')} ms; errors {row['errors']})",
                         "≥ 1.00×", ratio >= 1.0 and row["errors"] == 0))
    return out


def checks_issue7c(doc: dict[str, Any] | None) -> list[Check]:
    what = "webhook 201 → attachment.stored p99, nothing lost"
    if doc is None:
        return [_missing("7c", what, "< 250 ms")]
    p99 = doc["target"]["p99_ms"]
    rate = doc["params"]["rate_per_s"]
    return [Check("7c", what, f"{p99} ms at {rate:g}/s (lost {doc['lost']})", "< 250 ms",
                  bool(doc["target"]["passed"]))]


def checks_issue5(doc: dict[str, Any] | None) -> list[Check]:
    out = []
    single = _row(doc, "tus-node")
    chunked = _row(doc, _chunked_name(doc, "tus-node"))
    modes = [("raw", "stowage raw", single, "vs_tus_node", "vs_tus_node_chunked"),
             ("multipart", "stowage multipart", single, "vs_tus_node", "vs_tus_node_chunked"),
             ("tus 8 MiB chunks", _chunked_name(doc, "stowage tus"), chunked,
              "vs_tus_node_chunked", "vs_tus_node")]
    for label, name, peer, key, other in modes:
        row = _row(doc, name)
        peer_name = "tus-node" if peer is single else "tus-node chunked"
        what = f"256 MiB {label}: MB/s vs {peer_name}"
        if row is None or peer is None:
            out.append(_missing("5", what, "> 1.00×"))
            continue
        ratio = row[key]
        alt = row[other]
        alt_name = "tus-node chunked" if peer is single else "tus-node"
        measured = (f"{ratio:.2f}× ({row['median_mb_s']:.0f} vs {peer['median_mb_s']:.0f} MB/s;"
                    f" peak RSS {row['rss_peak_mib_worst']:.0f} MiB)")
        if alt is not None:
            measured += f"; {alt:.2f}× vs {alt_name}"
        out.append(Check("5", what, measured, "> 1.00×", ratio > 1.0))
    return out


def checks_reported(promo: dict[str, Any] | None, thumbs: dict[str, Any] | None) -> list[Check]:
    out = []
    for r in (promo or {}).get("results", []):
        out.append(Check("–", f"promotions/s, one worker, {r['backend']}",
                         f"{r['promotions_per_s']:.0f}/s ({r['stored']}/{r['count']} stored,"
                         f" job p50 {r['job_run_p50_ms']} ms)", "(reported)",
                         None if r["stored"] == r["count"] else False))
    if promo is None:
        out.append(_missing("–", "promotions/s, one worker", "(reported)"))
    if thumbs is None:
        out.append(_missing("–", "thumbnails: build_derivative vs naive Pillow", "≥ 2×"))
    else:
        speedup = thumbs["speedup_a_over_b"]
        rates = {r["mode"]: r["thumbs_per_s"] for r in thumbs["results"]}
        out.append(Check("–", "thumbnails: build_derivative vs naive Pillow",
                         f"{speedup:.1f}× ({rates['a']:.1f} vs {rates['b']:.1f}/s;"
                         f" pool {rates['c']:.1f}/s)", "≥ 2×", speedup >= 2))
    return out


def checks_sniff(doc: dict[str, Any] | None) -> list[Check]:
    what = "sniff: index over puremagic's private tables vs its public call"
    if doc is None:
        return [_missing("18", what, "≥ 2×")]
    return [Check("18", what, f"{doc['speedup']:.1f}× ({doc['index_us']:.0f} vs"
                              f" {doc['public_us']:.0f} µs per sniff)",
                  f"≥ {doc['target']['speedup']:g}×", bool(doc["target"]["passed"]))]


def checks_scan(doc: dict[str, Any] | None) -> list[Check]:
    what = "scanning's cost per promotion vs clamd's own time per file (1 MiB)"
    if doc is None:
        return [_missing("20", what, "≤ 1.2× clamd's")]
    t, c = doc["target"], doc["clamd"]
    return [Check("20", what, f"{t['scan_cost_ms_per_promotion']:.2f} ms"
                              f" ({t['ratio_to_clamd']:.2f}× clamd's {c['ms_per_file']:.2f} ms)",
                  "≤ 1.2× clamd's", bool(t["passed"]))]


def checks_scale(doc: dict[str, Any] | None) -> list[Check]:
    if doc is None:
        return [_missing("25", "scale fixture (bench/scale.py)", "see bench/scale.py")]
    n = doc["large"]["shape"]["attachments"]
    return [Check("25", f"{v['check']} at {n:,} rows",
                  f"{v['large']:g} {v['unit']} ({v['ratio']:g}× the 1,000-row database)",
                  v["target"], bool(v["met"])) for v in doc["verdicts"]]


def verdicts(docs: dict[str, dict[str, Any] | None]) -> list[Check]:
    scale = checks_scale(docs["scale"]) if "scale" in docs else []
    return [*scale,
            *checks_issue7a(docs.get("uploads_1024")), *checks_issue7b(docs.get("small_uploads")),
            *checks_issue7c(docs.get("webhook_latency")), *checks_issue5(docs.get("uploads_256")),
            *checks_reported(docs.get("promotions"), docs.get("thumbnails")),
            *checks_sniff(docs.get("sniff")), *checks_scan(docs.get("scan"))]


def _met(c: Check) -> str:
    if c.measured == "did not run":
        return "ERROR"
    return {True: "yes", False: "**NO**", None: "–"}[c.met]


def table(checks: list[Check]) -> str:
    lines = ["| issue | check | measured | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {c.issue} | {c.what} | {c.measured} | {c.target} | {_met(c)} |"
              for c in checks]
    return "\n".join(lines)


# --- details, from the JSON -------------------------------------------------------------------

def uploads_table(doc: dict[str, Any]) -> str:
    lines = ["| target | MB/s | vs tus-node | vs tus-node chunked | RSS peak MiB"
             " | RSS growth MiB | server CPU | client CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    f = _f
    for r in doc["results"]:
        lines.append(f"| {r['name']} | {r['median_mb_s']:.0f} | {f(r['vs_tus_node'], '.2f', '×')}"
                     f" | {f(r['vs_tus_node_chunked'], '.2f', '×')}"
                     f" | {f(r['rss_peak_mib_worst'], '.0f')}"
                     f" | {f(r['rss_growth_mib_worst'], '.1f')}"
                     f" | {f(r['server_cpu_pct_median'], '.0f', '%')}"
                     f" | {f(r['client_cpu_pct_median'], '.0f', '%')} |")
    return "\n".join(lines)


def details(docs: dict[str, dict[str, Any] | None]) -> str:
    parts = []
    for key, title in (("uploads_1024", "1024 MiB uploads (issue 7a)"),
                       ("uploads_256", "256 MiB uploads (issue 5)")):
        doc = docs.get(key)
        if doc:
            parts.append(f"{title}, median of {doc['runs']} run(s):\n\n{uploads_table(doc)}")
    small = docs.get("small_uploads")
    if small:
        p = small["params"]
        lines = [f"Small uploads (issue 7b): {p['size_bytes']} bytes, {p['concurrency']} in"
                 f" flight, {p['duration_s']:g} s × {p['runs']} run(s):", "",
                 "| target | uploads/s | vs tus-node | p50 ms | p99 ms | errors | server CPU"
                 " | client CPU |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in small["results"]:
            lines.append(f"| {r['name']} | {r['uploads_per_s']:.0f}"
                         f" | {_f(r['vs_tus_node'], '.2f', '×')} | {_f(r['p50_ms'], '.1f')}"
                         f" | {_f(r['p99_ms'], '.1f')} | {r['errors']}"
                         f" | {_f(r['server_cpu_pct'], '.0f', '%')}"
                         f" | {_f(r['client_cpu_pct'], '.0f', '%')} |")
        parts.append("\n".join(lines))
    hook = docs.get("webhook_latency")
    if hook:
        lines = [f"Webhook latency (issue 7c): {hook['params']['rate_per_s']:g} uploads/s for"
                 f" {hook['params']['duration_s']:g} s:", "",
                 "| | count | p50 ms | p90 ms | p99 ms | max ms |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name, s in hook["latencies"].items():
            lines.append(f"| {name} | {s['count']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']}"
                         f" | {s['max_ms']} |")
        parts.append("\n".join(lines))
    promo = docs.get("promotions")
    if promo:
        lines = [f"Promotions: {promo['params']['count']} × {promo['params']['size_bytes']}"
                 " bytes, one worker:", "",
                 "| backend | promotions/s | request→stored p50 / p99 ms | job run p50 / p99 ms"
                 " | worker CPU | moto CPU |", "|---|---:|---:|---:|---:|---:|"]
        for r in promo["results"]:
            lines.append(f"| {r['backend']} | {r['promotions_per_s']:.0f}"
                         f" | {r['latency_p50_ms']} / {r['latency_p99_ms']}"
                         f" | {r['job_run_p50_ms']} / {r['job_run_p99_ms']}"
                         f" | {r['cpu_pct']['worker']}% | {r['cpu_pct'].get('moto', '–')}"
                         f"{'%' if 'moto' in r['cpu_pct'] else ''} |")
        parts.append("\n".join(lines))
    thumbs = docs.get("thumbnails")
    if thumbs:
        lines = [f"Thumbnails: {thumbs['count']} per mode, 12 MP JPEG → 200×200 WebP:", "",
                 "| mode | thumbs/s | ms/thumb | peak RSS MiB |", "|---|---:|---:|---:|"]
        for r in thumbs["results"]:
            lines.append(f"| {r['mode']} {r['label']} | {r['thumbs_per_s']:.1f}"
                         f" | {r['ms_per_thumb']:.0f} | {r['peak_rss_mb']:.0f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 run per upload target, 5-10 s loads, fewer promotions/thumbnails")
    p.add_argument("--only", default=None,
                   help="comma-separated step keys to run (default all): uploads_1024,"
                        "uploads_256,small_uploads,webhook_latency,promotions,thumbnails,sniff,scan;"
                        " and scale (issue 25), which runs only when named here")
    p.add_argument("--reuse", action="store_true",
                   help="with --only: take the other benchmarks' results from their JSON of an"
                        " earlier run_all (same --json directory) instead of leaving them out")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = steps(args.json.parent)
    docs: dict[str, dict[str, Any] | None] = {}
    runs: dict[str, dict[str, Any]] = {}
    if args.only:
        keys = {k.strip() for k in args.only.split(",")}
        for step in chosen:
            if step.key not in keys and args.reuse and step.json_path.exists():
                docs[step.key] = json.loads(step.json_path.read_text())
                runs[step.key] = {"reused": str(step.json_path)}
        chosen = [s for s in chosen if s.key in keys]
    else:
        chosen = [s for s in chosen if not s.opt_in]
    failed = False
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = machine()  # the load average before we add ours

    def term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, term)
    try:
        for step in chosen:
            code, doc, seconds = run_step(step, args.quick)
            docs[step.key] = doc
            runs[step.key] = {"exit_code": code, "seconds": round(seconds, 1),
                              "json": str(step.json_path)}
            if doc is None:
                failed = True
                print(f"=== {step.key} FAILED (exit {code}, no JSON)", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; every benchmark cleaned up after itself", file=sys.stderr)
        return 130
    checks = verdicts(docs)
    print("\n" + "=" * 100)
    print(f"Targets ({'--quick' if args.quick else 'full'} run, {started}):\n")
    print(table(checks))
    print()
    print(details(docs))
    missed = any(c.met is False for c in checks)
    write_json(args.json, {
        "when": started,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "quick": args.quick,
        "machine": info,
        "steps": runs,
        "checks": [c.__dict__ for c in checks],
        "results": docs,
    })
    print(f"\nJSON: {args.json}")
    return 2 if failed else 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
