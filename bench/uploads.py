#!/usr/bin/env python3
"""Upload throughput and server memory: Stowage vs the Node tus server vs a discard sink.

One command, one run, one generated file, the same client (curl) for every target:

    python bench/uploads.py [--size-mib 1024] [--runs 1] [--json out.json]

Targets (see bench/README.md for what each column means):

* disk write / disk write + fsync: no HTTP at all, what the filesystem takes.
* sink (node) / sink (python): loopback HTTP PUT into a server that discards the body, the
  physical limit of one HTTP stream here (the peer's sink.mjs / sink.py).
* tus-node: @tus/server + @tus/file-store, POST creation then one PATCH with the whole file.
* stowage multipart / stowage raw: POST /v1/attachments (multipart/form-data) and
  POST /v1/attachments/raw, both with promote=false so no worker is needed.

Every server runs as its own process, so its RSS and CPU time can be sampled alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

MiB = 1024 * 1024
MB = 1_000_000
BLOCK = MiB
REPO = Path(__file__).resolve().parent.parent
DEFAULT_PEER_DIR = Path("/work/shared/peers/tus-node")
DEFAULT_JSON = REPO / "bench" / "results" / "uploads.json"
SAMPLE_INTERVAL = 0.02
WARMUP_MIB = 8
# curl's own timers: the transfer starts at pretransfer and ends when the response is read.
CURL_WRITE_OUT = "%{http_code} %{time_pretransfer} %{time_total}"
# No "Expect: 100-continue" round trip: the body goes right after the headers, everywhere.
CURL_BASE = ["curl", "-sS", "--no-progress-meter", "-H", "Expect:"]


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


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def empty_dir(path: Path) -> None:
    """Remove what a target stored, keeping the directory its server writes into."""
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


# --- processes -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess, logging to a file (a full pipe would stall it)."""

    def __init__(self, name: str, cmd: list[str], *, env: dict[str, str], cwd: Path,
                 log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name.replace(' ', '-')}.log"
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C meant for the bench must not kill a server mid-upload
            # before the bench's own cleanup stops it.
            self.popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until `url` answers at all (any status): the server is accepting requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


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


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children: the curl runs, as each is waited for."""
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
class Target:
    """Something to upload into: `upload` does the timed transfer and verifies it."""

    name: str
    server: Server | None  # the process whose RSS/CPU is measured; None for disk references
    upload: Callable[[Payload], float]  # seconds of the transfer, after checking it worked
    cleanup: Callable[[], None] = lambda: None  # drop what was stored, between runs


def disk_target(name: str, dest_dir: Path, fsync: bool) -> Target:
    """Copy the payload with 1 MiB writes: what the filesystem alone takes (no HTTP)."""
    dest = dest_dir / "disk-copy.bin"

    def upload(payload: Payload) -> float:
        start = time.perf_counter()
        with open(payload.path, "rb") as src, open(dest, "wb") as out:
            while block := src.read(BLOCK):
                out.write(block)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        return time.perf_counter() - start

    return Target(name, None, upload, lambda: dest.unlink(missing_ok=True))


def sink_target(name: str, server: Server, url: str, work: Path) -> Target:
    def upload(payload: Payload) -> float:
        res = curl(["-T", str(payload.path), url], work)
        expect(res.status == 204, f"{name} answered 204", res)
        received = int(res.headers.get("x-bytes-received", -1))
        expect(received == payload.size, f"{name} received {received} of {payload.size} bytes")
        return res.seconds

    return Target(name, server, upload)


def tus_target(server: Server, base: str, files: Path, work: Path) -> Target:
    """tus 1.0: create with Upload-Length, then one PATCH streaming the whole file."""
    tus = ["-H", "Tus-Resumable: 1.0.0"]

    def upload(payload: Payload) -> float:
        meta = base64.b64encode(payload.path.name.encode()).decode()
        created = curl([*tus, "-X", "POST", "-H", f"Upload-Length: {payload.size}",
                        "-H", f"Upload-Metadata: filename {meta}", f"{base}/files"], work)
        expect(created.status == 201 and "location" in created.headers, "tus creation", created)
        location = created.headers["location"]
        if location.startswith("/"):
            location = base + location
        res = curl([*tus, "-X", "PATCH", "-H", "Content-Type: application/offset+octet-stream",
                    "-H", "Upload-Offset: 0", "-T", str(payload.path), location], work)
        expect(res.status == 204, "tus PATCH answered 204", res)
        offset = int(res.headers.get("upload-offset", -1))
        expect(offset == payload.size, f"tus Upload-Offset {offset} == {payload.size}")
        # byte for byte, outside the timing
        stored = files / location.rsplit("/", 1)[-1]
        expect(sha256_of(stored) == payload.sha256, "tus stored file matches the payload")
        return res.seconds

    return Target("tus-node", server, upload, lambda: empty_dir(files))


def stowage_targets(server: Server, base: str, api_key: str, cache: Path,
                    work: Path) -> list[Target]:
    auth = ["-H", f"Authorization: Bearer {api_key}"]

    def check(name: str, res: CurlResult, payload: Payload) -> float:
        expect(res.status == 201, f"{name} answered 201", res)
        att = json.loads(res.body)
        expect(att["size"] == payload.size, f"{name} size {att['size']} == {payload.size}")
        expect(att["sha256"] == payload.sha256, f"{name} sha256 matches the payload")
        return res.seconds

    def multipart(payload: Payload) -> float:
        # promote before the file: fields ahead of the file part are validated up front
        res = curl([*auth, "-F", "promote=false",
                    "-F", f"file=@{payload.path};type=application/octet-stream",
                    f"{base}/v1/attachments"], work)
        return check("stowage multipart", res, payload)

    def raw(payload: Payload) -> float:
        res = curl([*auth, "-X", "POST", "-H", "Content-Type: application/octet-stream",
                    "-T", str(payload.path),
                    f"{base}/v1/attachments/raw?filename={payload.path.name}&promote=false"],
                   work)
        return check("stowage raw", res, payload)

    # The rows stay in the bench database (dropped at the end); only the bytes go.
    return [Target("stowage multipart", server, multipart, lambda: empty_dir(cache)),
            Target("stowage raw", server, raw, lambda: empty_dir(cache))]


# --- starting the servers --------------------------------------------------------------------

def clean_env() -> dict[str, str]:
    """The environment without STOWAGE_* settings, so a developer's shell cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STOWAGE_")}


def start_sinks(stack: contextlib.ExitStack, peer: Path, tmp: Path) -> list[Target]:
    targets = []
    for name, cmd in (("sink (node)", ["node", "sink.mjs"]),
                      ("sink (python)", [sys.executable, "sink.py"])):
        port = free_port()
        server = Server(name, cmd, env={**clean_env(), "SINK_PORT": str(port)}, cwd=peer,
                        log_dir=tmp)
        stack.callback(server.stop)
        server.wait_http(f"http://127.0.0.1:{port}/")
        targets.append(sink_target(name, server, f"http://127.0.0.1:{port}/upload", tmp))
    return targets


def start_tus(stack: contextlib.ExitStack, peer: Path, tmp: Path) -> Target:
    if not (peer / "node_modules").is_dir():
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=peer,
                       check=True)
    files = tmp / "tus-files"
    files.mkdir()
    port = free_port()
    env = {**clean_env(), "TUS_HOST": "127.0.0.1", "TUS_PORT": str(port), "TUS_DIR": str(files)}
    server = Server("tus-node", ["node", "server.mjs"], env=env, cwd=peer, log_dir=tmp)
    stack.callback(server.stop)
    base = f"http://127.0.0.1:{port}"
    server.wait_http(f"{base}/files")
    return tus_target(server, base, files, tmp)


async def _drop_database(pg_base: str, name: str) -> None:
    conn = await asyncpg.connect(f"{pg_base}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def stowage_cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=cwd,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stowage {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def start_stowage(stack: contextlib.ExitStack, tmp: Path, pg_base: str, redis_url: str,
                  payload_size: int) -> list[Target]:
    """A fresh database, an app and its key, then `stowage serve` on a free port."""
    db_name = f"stowage_bench_{secrets.token_hex(4)}"
    cache = tmp / "stowage-cache"
    env = {
        **clean_env(),
        "STOWAGE_DATABASE_URL": f"{pg_base}/{db_name}",
        "STOWAGE_REDIS_URL": redis_url,
        "STOWAGE_QUEUE_NAME": f"stowage:bench:{secrets.token_hex(4)}",
        "STOWAGE_CACHE_URL": f"file://{cache}",
        "STOWAGE_STORE_URL": f"file://{tmp / 'stowage-store'}",
        "STOWAGE_MAX_UPLOAD_SIZE": str(max(2 * payload_size, 5 * 1024 * MiB)),
        "STOWAGE_SECRET_KEY": "bench",
        # `python -m app.cli` from the temp dir finds this checkout even if not pip-installed
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # Registered before migrate creates it, so a failure half-way still drops it.
    stack.callback(lambda: asyncio.run(_drop_database(pg_base, db_name)))
    # cwd=tmp: no .env file of the repo is read
    stowage_cli(["migrate"], env, tmp)
    api_key = json.loads(stowage_cli(["apps", "create", "bench", "--json"], env, tmp))["api_key"]
    port = free_port()
    server = Server("stowage", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                    env=env, cwd=tmp, log_dir=tmp)
    stack.callback(server.stop)
    base = f"http://127.0.0.1:{port}"
    server.wait_http(f"{base}/healthz")
    cache.mkdir(exist_ok=True)
    return stowage_targets(server, base, api_key, cache, tmp)


# --- measuring -------------------------------------------------------------------------------

@dataclass
class Measurement:
    seconds: float
    mb_s: float
    rss_baseline_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_growth_mib: float | None = None
    server_cpu_pct: float | None = None  # of one core, over the transfer
    client_cpu_pct: float | None = None  # curl's, likewise: both share this machine's cores


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
        seconds = target.upload(payload)
        return Measurement(seconds, payload.size / MB / seconds)
    pid = target.server.pid
    cpu_before, client_before = cpu_seconds(pid), children_cpu_seconds()
    with RssSampler(pid) as rss:
        seconds = target.upload(payload)
    cpu = cpu_seconds(pid) - cpu_before
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
            print(f"  run {i + 1}/{runs} {target.name:<18} {m.mb_s:8.1f} MB/s", flush=True)
    return list(summaries.values())


# --- reporting -------------------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def table(summaries: list[Summary]) -> str:
    tus = next((s.mb_s for s in summaries if s.name == "tus-node"), None)
    lines = ["| target | MB/s | vs tus-node | RSS baseline MiB | RSS peak MiB | RSS growth MiB"
             " | server CPU | curl CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        cpu, client = s.median("server_cpu_pct"), s.median("client_cpu_pct")
        lines.append(
            f"| {s.name} | {s.mb_s:.0f} | {_fmt(s.mb_s / tus if tus else None, '.2f')}× "
            f"| {_fmt(s.best('rss_baseline_mib'), '.0f')} "
            f"| {_fmt(s.worst('rss_peak_mib'), '.0f')} "
            f"| {_fmt(s.worst('rss_growth_mib'), '.1f')} | {_pct(cpu)} | {_pct(client)} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(cmd, capture_output=True, text=True,
                                  check=True).stdout.splitlines()[0].strip()
        return "?"

    cpu_model = next((line.split(":", 1)[1].strip()
                      for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu_model,
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "node": version(["node", "-v"]), "curl": version(["curl", "-V"]).split(" (")[0],
        "stowage_commit": version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def write_json(path: Path, args: argparse.Namespace, payload: Payload,
               summaries: list[Summary]) -> None:
    tus = next((s.mb_s for s in summaries if s.name == "tus-node"), None)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "size_bytes": payload.size,
        "runs": args.runs,
        "prewarm": args.prewarm,
        "mb": "10^6 bytes",
        "results": [{"name": s.name, "median_mb_s": round(s.mb_s, 1),
                     "vs_tus_node": round(s.mb_s / tus, 3) if tus else None,
                     "runs": [asdict(m) for m in s.runs]} for s in summaries],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="payload size (default 1024)")
    p.add_argument("--runs", type=int, default=1, help="timed runs per target (median)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--peer-dir", type=Path, default=DEFAULT_PEER_DIR,
                   help="the tus-node peer (server.mjs, sink.mjs, sink.py)")
    p.add_argument("--tmp-dir", type=Path, default=None,
                   help="where payload and every server's files go (one filesystem for all;"
                        " default: the system temp dir)")
    p.add_argument("--pg", default="postgresql://127.0.0.1:5432",
                   help="PostgreSQL server for the throwaway bench database")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--prewarm", action="store_true",
                   help="before each upload, write and delete a scratch copy of the payload so"
                        " the upload reuses warm page-cache pages (isolates the servers' own"
                        " work from a VM's slow first touch of memory)")
    args = p.parse_args(argv)
    if args.size_mib < WARMUP_MIB or args.runs < 1:
        p.error(f"--size-mib must be at least {WARMUP_MIB} and --runs at least 1")
    return args


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so servers, temp files and the database still go."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        targets = [
            disk_target("disk write", tmp, fsync=False),
            disk_target("disk write + fsync", tmp, fsync=True),
            *start_sinks(stack, args.peer_dir, tmp),
            start_tus(stack, args.peer_dir, tmp),
            *start_stowage(stack, tmp, args.pg, args.redis, payload.size),
        ]
        summaries = run_all(targets, payload, warmup, args.runs, args.prewarm)
    print()
    print(f"{args.size_mib} MiB, {args.runs} run(s){', --prewarm' * args.prewarm},"
          " median MB/s (10^6 bytes/s):")
    print(table(summaries))
    write_json(args.json, args, payload, summaries)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
