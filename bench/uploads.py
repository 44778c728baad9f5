#!/usr/bin/env python3
"""Upload throughput and server memory: Stowage vs the Node tus server vs a discard sink.

One command, one run, one generated file, the same client for every target of a kind (curl
for single-request uploads, bench/tus_client.py for chunked tus):

    python bench/uploads.py [--size-mib 1024] [--runs 1] [--targets a,b,...] [--json out.json]
    python bench/uploads.py --size-mib 256      # the issue-5 table (every target by default)

Targets (see bench/README.md for what each column means; `--targets` takes the keys):

* disk, disk-fsync: no HTTP at all, what the filesystem takes.
* sink-node, sink-python: loopback HTTP PUT into a server that discards the body, the physical
  limit of one HTTP stream here (the peer's sink.mjs / sink.py).
* tus-node: @tus/server + @tus/file-store, POST creation then one PATCH with the whole file.
* tus-node-chunked: the same server, PATCHes of --chunk-mib (8) MiB from bench/tus_client.py.
* stowage-multipart, stowage-raw: POST /v1/attachments (multipart/form-data) and
  POST /v1/attachments/raw, both with promote=false so no worker is needed.
* stowage-tus: POST /v1/tus/ then PATCHes of --chunk-mib MiB, the same client as
  tus-node-chunked, promote=false in Upload-Metadata.

Every server runs as its own process, so its RSS and CPU time can be sampled alone.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _common import (
    DEFAULT_PEER_DIR,
    DEFAULT_PG,
    DEFAULT_REDIS,
    MB,
    REPO,
    MiB,
    Server,
    Stowage,
    TusNode,
    choice_list,
    clean_env,
    cpu_seconds,
    empty_dir,
    free_port,
    machine,
    sha256_of,
    start_server,
    start_stowage,
    start_tus_node,
    terminate_cleanly,
    write_json,
)

BLOCK = MiB
DEFAULT_JSON = REPO / "bench" / "results" / "uploads.json"
TUS_CLIENT = Path(__file__).resolve().parent / "tus_client.py"
SAMPLE_INTERVAL = 0.02
WARMUP_MIB = 8
# curl's own timers: the transfer starts at pretransfer and ends when the response is read.
CURL_WRITE_OUT = "%{http_code} %{time_pretransfer} %{time_total}"
# No "Expect: 100-continue" round trip: the body goes right after the headers, everywhere.
CURL_BASE = ["curl", "-sS", "--no-progress-meter", "-H", "Expect:"]
# --targets keys, in the order the rows are printed
TARGET_KEYS = ("disk", "disk-fsync", "sink-node", "sink-python", "tus-node", "tus-node-chunked",
               "stowage-multipart", "stowage-raw", "stowage-tus")


# --- payload ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Payload:
    path: Path
    size: int
    sha256: str


def make_payload(path: Path, size_mib: int) -> Payload:
    """Random bytes, written (and hashed) 1 MiB at a time so they never sit in memory."""
    hasher = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size_mib):
            block = os.urandom(BLOCK)
            hasher.update(block)
            f.write(block)
    return Payload(path, size_mib * MiB, hasher.hexdigest())


# --- memory and CPU of the server ------------------------------------------------------------

class RssSampler:
    """Peak RSS of one process, sampled in a thread every ~20 ms while an upload runs.

    Where the kernel allows it, the process's high-water mark (VmHWM) is also reset before
    and read after, which catches a spike shorter than the sampling interval.
    """

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.pid = pid
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._hwm_reset = _reset_hwm(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._hwm_reset:
            self.peak = max(self.peak, _read_status_kib(self.pid, "VmHWM") * 1024)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def _sample(self) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS
    except OSError:
        return False
    return True


def _read_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children: the clients (curl, tus_client.py), as
    each is waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- curl ------------------------------------------------------------------------------------

@dataclass
class CurlResult:
    status: int
    seconds: float  # first byte sent -> response received
    headers: dict[str, str]
    body: bytes


def curl(args: list[str], work: Path) -> CurlResult:
    """One request; curl reads upload bodies from disk as it sends them (-T, -F file=@)."""
    head, body = work / "curl-headers", work / "curl-body"
    out = subprocess.run(
        [*CURL_BASE, "-D", str(head), "-o", str(body), "-w", CURL_WRITE_OUT, *args],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)} failed: {out.stderr.strip()}")
    code, pretransfer, total = out.stdout.split()
    return CurlResult(int(code), float(total) - float(pretransfer),
                      _last_headers(head.read_text(errors="replace")), body.read_bytes())


def _last_headers(raw: str) -> dict[str, str]:
    """Headers of the final response (curl -D also records any interim 1xx)."""
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    headers: dict[str, str] = {}
    for line in blocks[-1].splitlines()[1:] if blocks else []:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def expect(cond: bool, what: str, res: CurlResult | None = None) -> None:
    if not cond:
        detail = f" (HTTP {res.status}: {res.body[:300]!r})" if res else ""
        raise RuntimeError(f"upload check failed: {what}{detail}")


# --- targets ---------------------------------------------------------------------------------

@dataclass
class Transfer:
    seconds: float  # of the transfer, after checking it worked
    # CPU seconds the client spent in the transfer, if it measured them itself; otherwise
    # measure() takes the CPU time of the child processes it waited for (curl)
    client_cpu: float | None = None


@dataclass
class Target:
    """Something to upload into: `upload` does the timed transfer and verifies it."""

    name: str
    server: Server | None  # the process whose RSS/CPU is measured; None for disk references
    upload: Callable[[Payload], Transfer]
    cleanup: Callable[[], None] = lambda: None  # drop what was stored, between runs


def disk_target(name: str, dest_dir: Path, fsync: bool) -> Target:
    """Copy the payload with 1 MiB writes: what the filesystem alone takes (no HTTP)."""
    dest = dest_dir / "disk-copy.bin"

    def upload(payload: Payload) -> Transfer:
        start = time.perf_counter()
        with open(payload.path, "rb") as src, open(dest, "wb") as out:
            while block := src.read(BLOCK):
                out.write(block)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        return Transfer(time.perf_counter() - start)

    return Target(name, None, upload, lambda: dest.unlink(missing_ok=True))


def sink_target(name: str, server: Server, url: str, work: Path) -> Target:
    def upload(payload: Payload) -> Transfer:
        res = curl(["-T", str(payload.path), url], work)
        expect(res.status == 204, f"{name} answered 204", res)
        received = int(res.headers.get("x-bytes-received", -1))
        expect(received == payload.size, f"{name} received {received} of {payload.size} bytes")
        return Transfer(res.seconds)

    return Target(name, server, upload)


def tus_chunked(url: str, payload: Payload, chunk_mib: float, *,
                headers: dict[str, str] | None = None,
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """One chunked tus upload by bench/tus_client.py in its own process (so its CPU time is
    counted as the client's, like curl's); returns its JSON result."""
    cmd = [sys.executable, str(TUS_CLIENT), url, str(payload.path),
           "--chunk-mib", str(chunk_mib)]
    cmd += [arg for name, value in (headers or {}).items()
            for arg in ("--header", f"{name}: {value}")]
    cmd += [arg for key, value in (metadata or {}).items()
            for arg in ("--metadata", f"{key}={value}")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"chunked tus upload to {url} failed: {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout)
    offset = int(result["headers"].get("upload-offset", -1))
    expect(result["status"] == 204 and offset == payload.size,
           f"last PATCH: 204 with Upload-Offset {offset} == {payload.size}")
    return result


def tus_node_targets(node: TusNode, work: Path, chunk_mib: float,
                     keys: set[str]) -> list[Target]:
    """tus 1.0 into the Node peer: one PATCH with the whole file (curl), and/or PATCHes of
    `chunk_mib` MiB (tus_client.py, the client the stowage-tus row uses too)."""
    tus = ["-H", "Tus-Resumable: 1.0.0"]

    def verify(location: str, payload: Payload) -> None:
        # byte for byte, outside the timing
        stored = node.files / location.rsplit("/", 1)[-1]
        expect(sha256_of(stored) == payload.sha256, "tus stored file matches the payload")

    def single(payload: Payload) -> Transfer:
        meta = base64.b64encode(payload.path.name.encode()).decode()
        created = curl([*tus, "-X", "POST", "-H", f"Upload-Length: {payload.size}",
                        "-H", f"Upload-Metadata: filename {meta}", f"{node.base}/files"], work)
        expect(created.status == 201 and "location" in created.headers, "tus creation", created)
        location = created.headers["location"]
        if location.startswith("/"):
            location = node.base + location
        res = curl([*tus, "-X", "PATCH", "-H", "Content-Type: application/offset+octet-stream",
                    "-H", "Upload-Offset: 0", "-T", str(payload.path), location], work)
        expect(res.status == 204, "tus PATCH answered 204", res)
        offset = int(res.headers.get("upload-offset", -1))
        expect(offset == payload.size, f"tus Upload-Offset {offset} == {payload.size}")
        verify(location, payload)
        return Transfer(res.seconds)

    def chunked(payload: Payload) -> Transfer:
        result = tus_chunked(f"{node.base}/files", payload, chunk_mib,
                             metadata={"filename": payload.path.name})
        verify(result["location"], payload)
        return Transfer(result["seconds"], result["cpu_seconds"])

    targets = []
    if "tus-node" in keys:
        targets.append(Target("tus-node", node.server, single, lambda: empty_dir(node.files)))
    if "tus-node-chunked" in keys:
        targets.append(Target(f"tus-node ({chunk_mib:g} MiB chunks)", node.server, chunked,
                              lambda: empty_dir(node.files)))
    return targets


def stowage_targets(stowage: Stowage, cache: Path, work: Path, chunk_mib: float,
                    keys: set[str]) -> list[Target]:
    auth = ["-H", f"Authorization: Bearer {stowage.api_key}"]
    base = stowage.base

    def check(name: str, att: dict[str, Any], payload: Payload) -> None:
        expect(att["size"] == payload.size, f"{name} size {att['size']} == {payload.size}")
        expect(att["sha256"] == payload.sha256, f"{name} sha256 matches the payload")

    def check_response(name: str, res: CurlResult, payload: Payload) -> Transfer:
        expect(res.status == 201, f"{name} answered 201", res)
        check(name, json.loads(res.body), payload)
        return Transfer(res.seconds)

    def multipart(payload: Payload) -> Transfer:
        # promote before the file: fields ahead of the file part are validated up front
        res = curl([*auth, "-F", "promote=false",
                    "-F", f"file=@{payload.path};type=application/octet-stream",
                    f"{base}/v1/attachments"], work)
        return check_response("stowage multipart", res, payload)

    def raw(payload: Payload) -> Transfer:
        res = curl([*auth, "-X", "POST", "-H", "Content-Type: application/octet-stream",
                    "-T", str(payload.path),
                    f"{base}/v1/attachments/raw?filename={payload.path.name}&promote=false"],
                   work)
        return check_response("stowage raw", res, payload)

    def tus(payload: Payload) -> Transfer:
        result = tus_chunked(f"{base}/v1/tus/", payload, chunk_mib, headers=stowage.auth_header,
                             metadata={"filename": payload.path.name, "promote": "false"})
        att_id = result["headers"].get("stowage-attachment-id")
        expect(bool(att_id), "stowage tus: the last PATCH names the Stowage-Attachment-Id")
        # outside the timing: the attachment as the API reports it
        req = urllib.request.Request(f"{base}/v1/attachments/{att_id}",
                                     headers=stowage.auth_header)
        with urllib.request.urlopen(req, timeout=30) as resp:
            check("stowage tus", json.loads(resp.read()), payload)
        return Transfer(result["seconds"], result["cpu_seconds"])

    # The rows stay in the bench database (dropped at the end); only the bytes go.
    made = {"stowage-multipart": Target("stowage multipart", stowage.server, multipart),
            "stowage-raw": Target("stowage raw", stowage.server, raw),
            "stowage-tus": Target(f"stowage tus ({chunk_mib:g} MiB chunks)", stowage.server,
                                  tus)}
    targets = [t for key, t in made.items() if key in keys]
    for t in targets:
        t.cleanup = lambda: empty_dir(cache)
    return targets


# --- starting the servers --------------------------------------------------------------------

def start_sinks(stack: contextlib.ExitStack, peer: Path, tmp: Path,
                keys: set[str]) -> list[Target]:
    targets = []
    for key, name, cmd in (("sink-node", "sink (node)", ["node", "sink.mjs"]),
                           ("sink-python", "sink (python)", [sys.executable, "sink.py"])):
        if key not in keys:
            continue
        port = free_port()
        server = start_server(stack, name, cmd, env={**clean_env(), "SINK_PORT": str(port)},
                              cwd=peer, log_dir=tmp)
        server.wait_http(f"http://127.0.0.1:{port}/")
        targets.append(sink_target(name, server, f"http://127.0.0.1:{port}/upload", tmp))
    return targets


def make_targets(stack: contextlib.ExitStack, args: argparse.Namespace, tmp: Path,
                 payload_size: int) -> list[Target]:
    """Start only the servers the chosen targets need; rows in TARGET_KEYS order."""
    keys = set(args.targets)
    targets = []
    if "disk" in keys:
        targets.append(disk_target("disk write", tmp, fsync=False))
    if "disk-fsync" in keys:
        targets.append(disk_target("disk write + fsync", tmp, fsync=True))
    targets += start_sinks(stack, args.peer_dir, tmp, keys)
    if keys & {"tus-node", "tus-node-chunked"}:
        node = start_tus_node(stack, args.peer_dir, tmp)
        targets += tus_node_targets(node, tmp, args.chunk_mib, keys)
    if keys & {"stowage-multipart", "stowage-raw", "stowage-tus"}:
        cache = tmp / "stowage-cache"
        stowage = start_stowage(stack, tmp, args.pg, args.redis, extra_env={
            "STOWAGE_MAX_UPLOAD_SIZE": str(max(2 * payload_size, 5 * 1024 * MiB)),
        })
        cache.mkdir(exist_ok=True)
        targets += stowage_targets(stowage, cache, tmp, args.chunk_mib, keys)
    return targets


# --- measuring -------------------------------------------------------------------------------

@dataclass
class Measurement:
    seconds: float
    mb_s: float
    rss_baseline_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_growth_mib: float | None = None
    server_cpu_pct: float | None = None  # of one core, over the transfer
    # the client's (curl or tus_client.py), likewise: both share this machine's cores
    client_cpu_pct: float | None = None


@dataclass
class Summary:
    name: str
    runs: list[Measurement] = field(default_factory=list)

    @property
    def mb_s(self) -> float:
        return statistics.median(m.mb_s for m in self.runs)

    def _values(self, attr: str) -> list[float]:
        return [v for m in self.runs if (v := getattr(m, attr)) is not None]

    def worst(self, attr: str) -> float | None:
        return max(self._values(attr), default=None)

    def best(self, attr: str) -> float | None:
        return min(self._values(attr), default=None)

    def median(self, attr: str) -> float | None:
        values = self._values(attr)
        return statistics.median(values) if values else None


def prewarm_page_cache(payload: Payload) -> None:
    """Write and delete a scratch copy of the payload, right before the upload.

    On a VM, page-cache pages freed a few seconds ago can be several times slower to write
    into than pages freed just now (probably the host reclaiming idle guest memory). The
    upload that follows reuses these pages, so every target starts from the same warm state.
    """
    scratch = payload.path.with_name("prewarm.bin")
    with open(payload.path, "rb") as src, open(scratch, "wb") as out:
        while block := src.read(BLOCK):
            out.write(block)
    scratch.unlink()


def measure(target: Target, payload: Payload, prewarm: bool = False) -> Measurement:
    # Write back everything earlier runs left dirty, so no run pays for another's bytes.
    os.sync()
    if prewarm:
        prewarm_page_cache(payload)
    if target.server is None:
        seconds = target.upload(payload).seconds
        return Measurement(seconds, payload.size / MB / seconds)
    pid = target.server.pid
    cpu_before, client_before = cpu_seconds(pid), children_cpu_seconds()
    with RssSampler(pid) as rss:
        transfer = target.upload(payload)
    seconds = transfer.seconds
    cpu = cpu_seconds(pid) - cpu_before
    client_cpu = transfer.client_cpu
    if client_cpu is None:
        client_cpu = children_cpu_seconds() - client_before
    return Measurement(
        seconds=seconds,
        mb_s=payload.size / MB / seconds,
        rss_baseline_mib=rss.baseline / MiB,
        rss_peak_mib=rss.peak / MiB,
        rss_growth_mib=(rss.peak - rss.baseline) / MiB,
        server_cpu_pct=100 * cpu / seconds,
        client_cpu_pct=100 * client_cpu / seconds,
    )


def run_all(targets: list[Target], payload: Payload, warmup: Payload,
            runs: int, prewarm: bool) -> list[Summary]:
    for target in targets:  # untimed: imports, JIT and first-use allocations happen here
        target.upload(warmup)
        target.cleanup()
    summaries = {t.name: Summary(t.name) for t in targets}
    # Interleaved (run 1 of every target, then run 2...), so drift hits all alike, and each
    # run starts one target later: what ran just before (page-cache state, a busy core)
    # affects an upload on a VM, and a fixed order would hand the same neighbour to the same
    # target every time.
    for i in range(runs):
        shift = i % len(targets)
        for target in targets[shift:] + targets[:shift]:
            m = measure(target, payload, prewarm)
            target.cleanup()
            summaries[target.name].runs.append(m)
            print(f"  run {i + 1}/{runs} {target.name:<26} {m.mb_s:8.1f} MB/s", flush=True)
    return list(summaries.values())


# --- reporting -------------------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def peers(summaries: list[Summary]) -> tuple[float | None, float | None]:
    """MB/s of the two tus-node rows: one PATCH (curl), and chunked (tus_client.py)."""
    single = next((s.mb_s for s in summaries if s.name == "tus-node"), None)
    chunked = next((s.mb_s for s in summaries if s.name.startswith("tus-node (")), None)
    return single, chunked


def _ratio(mb_s: float, peer: float | None) -> str:
    return f"{mb_s / peer:.2f}×" if peer else "–"


def table(summaries: list[Summary]) -> str:
    single, chunked = peers(summaries)
    lines = ["| target | MB/s | vs tus-node | vs tus-node chunked | RSS baseline MiB"
             " | RSS peak MiB | RSS growth MiB | server CPU | client CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        cpu, client = s.median("server_cpu_pct"), s.median("client_cpu_pct")
        lines.append(
            f"| {s.name} | {s.mb_s:.0f} | {_ratio(s.mb_s, single)} | {_ratio(s.mb_s, chunked)} "
            f"| {_fmt(s.best('rss_baseline_mib'), '.0f')} "
            f"| {_fmt(s.worst('rss_peak_mib'), '.0f')} "
            f"| {_fmt(s.worst('rss_growth_mib'), '.1f')} | {_pct(cpu)} | {_pct(client)} |"
        )
    return "\n".join(lines)


def per_run_table(summaries: list[Summary]) -> str:
    runs = max(len(s.runs) for s in summaries)
    lines = ["| target | " + " | ".join(f"run {i + 1}" for i in range(runs)) + " |",
             "|---|" + "---:|" * runs]
    for s in summaries:
        lines.append(f"| {s.name} | " + " | ".join(f"{m.mb_s:.0f}" for m in s.runs) + " |")
    return "\n".join(lines)


def write_results(path: Path, args: argparse.Namespace, payload: Payload,
                  summaries: list[Summary]) -> None:
    single, chunked = peers(summaries)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "size_bytes": payload.size,
        "runs": args.runs,
        "chunk_mib": args.chunk_mib,
        "targets": args.targets,
        "prewarm": args.prewarm,
        "mb": "10^6 bytes",
        "results": [{"name": s.name, "median_mb_s": round(s.mb_s, 1),
                     "vs_tus_node": round(s.mb_s / single, 3) if single else None,
                     "vs_tus_node_chunked": round(s.mb_s / chunked, 3) if chunked else None,
                     "rss_growth_mib_worst": s.worst("rss_growth_mib"),
                     "rss_peak_mib_worst": s.worst("rss_peak_mib"),
                     "server_cpu_pct_median": s.median("server_cpu_pct"),
                     "client_cpu_pct_median": s.median("client_cpu_pct"),
                     "runs": [asdict(m) for m in s.runs]} for s in summaries],
    }
    write_json(path, doc)


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="payload size (default 1024)")
    p.add_argument("--runs", type=int, default=1, help="timed runs per target (median)")
    p.add_argument("--targets", type=choice_list(TARGET_KEYS), default=list(TARGET_KEYS),
                   help=f"comma-separated, default all: {','.join(TARGET_KEYS)}")
    p.add_argument("--chunk-mib", type=float, default=8,
                   help="PATCH size of the chunked tus targets (default 8)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--peer-dir", type=Path, default=DEFAULT_PEER_DIR,
                   help="the tus-node peer (server.mjs, sink.mjs, sink.py)")
    p.add_argument("--tmp-dir", type=Path, default=None,
                   help="where payload and every server's files go (one filesystem for all;"
                        " default: the system temp dir)")
    p.add_argument("--pg", default=DEFAULT_PG,
                   help="PostgreSQL server for the throwaway bench database")
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--prewarm", action="store_true",
                   help="before each upload, write and delete a scratch copy of the payload so"
                        " the upload reuses warm page-cache pages (isolates the servers' own"
                        " work from a VM's slow first touch of memory)")
    args = p.parse_args(argv)
    if args.size_mib < WARMUP_MIB or args.runs < 1 or args.chunk_mib <= 0:
        p.error(f"--size-mib must be at least {WARMUP_MIB}, --runs at least 1 and --chunk-mib"
                " positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("curl") is None or shutil.which("node") is None:
        print("bench/uploads.py needs curl and node on PATH", file=sys.stderr)
        return 2
    with terminate_cleanly(), contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-bench-", dir=args.tmp_dir))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        print(f"payload: {args.size_mib} MiB of random bytes in {tmp}", flush=True)
        payload = make_payload(tmp / "payload.bin", args.size_mib)
        warmup = make_payload(tmp / "warmup.bin", WARMUP_MIB)
        targets = make_targets(stack, args, tmp, payload.size)
        summaries = run_all(targets, payload, warmup, args.runs, args.prewarm)
    print()
    print(f"{args.size_mib} MiB, {args.runs} run(s){', --prewarm' * args.prewarm},"
          " median MB/s (10^6 bytes/s):")
    print(table(summaries))
    if args.runs > 1:
        print()
        print(per_run_table(summaries))
    write_results(args.json, args, payload, summaries)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
