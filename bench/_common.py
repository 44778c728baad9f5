"""What the benchmarks share: server processes, a throwaway Stowage, the Node tus peer, cleanup.

Imported by the scripts next to it (`python bench/<script>.py` puts bench/ on sys.path). Every
helper that starts something takes a contextlib.ExitStack and registers its own cleanup there
at once, so that a failure half-way, Ctrl-C or SIGTERM still stops every process, drops the
database and the Redis queue, and lets the caller remove its temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from redis import asyncio as aioredis

MiB = 1024 * 1024
MB = 1_000_000
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_PEER_DIR = Path("/work/shared/peers/tus-node")
DEFAULT_PG = "postgresql://127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# --- small things ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment without STOWAGE_* settings, so a developer's shell cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STOWAGE_")}


def empty_dir(path: Path, attempts: int = 20) -> None:
    """Remove what a target stored, keeping the directory its server writes into. A load
    generator that stops mid-request (wrk at its deadline) leaves the server finishing a few
    uploads for a moment, so a directory that fills up again is tried again."""
    for attempt in range(attempts):
        try:
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink(missing_ok=True)
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: always a latency that really happened, never an interpolated one."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def cpu_seconds(pid: int) -> float:
    """CPU of the process and of every process under it (`stowage serve` with several
    processes does its work in children that live through a run)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError, IndexError):
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
        # other work on a shared VM moves every number: keep what it was at the start
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=str: datetimes and UUIDs in a result print as text
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names out of ``choices``, in their order."""
    def parse(value: str) -> list[str]:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = sorted(set(names) - set(choices))
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown name(s) {', '.join(unknown) or '(none given)'}; choose from"
                f" {','.join(choices)}")
        return [c for c in choices if c in names]
    return parse


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


# --- processes -------------------------------------------------------------------------------

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

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n"
                               f"{self.log_tail()}")

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until `url` answers at all (any status): the server is accepting requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
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
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_server(stack: contextlib.ExitStack, name: str, cmd: list[str], *,
                 env: dict[str, str], cwd: Path, log_dir: Path) -> Server:
    server = Server(name, cmd, env=env, cwd=cwd, log_dir=log_dir)
    stack.callback(server.stop)
    return server


# --- the Node tus peer -----------------------------------------------------------------------

@dataclass
class TusNode:
    server: Server
    base: str  # http://127.0.0.1:<port>; uploads are created at {base}/files
    files: Path  # where @tus/file-store keeps them: <id> and <id>.json


def start_tus_node(stack: contextlib.ExitStack, peer: Path, tmp: Path) -> TusNode:
    if not (peer / "node_modules").is_dir():
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=peer,
                       check=True)
    files = tmp / "tus-files"
    files.mkdir(exist_ok=True)
    port = free_port()
    env = {**clean_env(), "TUS_HOST": "127.0.0.1", "TUS_PORT": str(port), "TUS_DIR": str(files)}
    server = start_server(stack, "tus-node", ["node", "server.mjs"], env=env, cwd=peer,
                          log_dir=tmp)
    base = f"http://127.0.0.1:{port}"
    server.wait_http(f"{base}/files")
    return TusNode(server, base, files)


# --- a throwaway Stowage ---------------------------------------------------------------------

def stowage_cmd() -> list[str]:
    """`python -m app.cli`: works from any cwd with REPO on PYTHONPATH, installed or not."""
    return [sys.executable, "-m", "app.cli"]


def stowage_cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run([*stowage_cmd(), *args], env=env, cwd=cwd, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stowage {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout


async def drop_database(pg_base: str, name: str) -> None:
    conn = await asyncpg.connect(f"{pg_base}/postgres")
    try:
        # FORCE: a killed server's connections must not keep the database alive
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def drop_queue(redis_url: str, queue: str) -> None:
    """Whatever a run left in the shared Redis under its queue name: jobs, results, health."""
    redis = aioredis.from_url(redis_url)
    try:
        job_ids = [j.decode() for j in await redis.zrange(queue, 0, -1)]
        keys = [queue, f"{queue}:health-check",
                *(f"arq:{kind}:{j}" for j in job_ids for kind in ("job", "retry"))]
        await redis.delete(*keys)
    finally:
        await redis.aclose()


@dataclass
class Stowage:
    base: str
    api_key: str
    server: Server
    env: dict[str, str]  # what `serve` got: a worker started later must get the same
    db_url: str
    tmp: Path

    @property
    def auth_header(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def start_worker(self, stack: contextlib.ExitStack, name: str = "worker") -> Server:
        return start_server(stack, name, [*stowage_cmd(), "worker"], env=self.env,
                            cwd=self.tmp, log_dir=self.tmp)


def start_stowage(stack: contextlib.ExitStack, tmp: Path, pg_base: str, redis_url: str, *,
                  extra_env: dict[str, str] | None = None, name: str = "stowage") -> Stowage:
    """A fresh database and queue, an app and its key, then `stowage serve` on a free port.

    `file://` cache and store in `tmp` unless `extra_env` says otherwise (S3).
    """
    db_name = f"stowage_bench_{secrets.token_hex(4)}"
    queue = f"stowage:bench:{secrets.token_hex(4)}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **clean_env(),
        "STOWAGE_DATABASE_URL": f"{pg_base}/{db_name}",
        "STOWAGE_REDIS_URL": redis_url,
        "STOWAGE_QUEUE_NAME": queue,
        "STOWAGE_CACHE_URL": f"file://{tmp / 'stowage-cache'}",
        "STOWAGE_STORE_URL": f"file://{tmp / 'stowage-store'}",
        "STOWAGE_PUBLIC_URL": base,  # tus Location headers point here
        "STOWAGE_SECRET_KEY": "bench-" * 8,
        # the benchmarks read no worker metrics
        "STOWAGE_WORKER_METRICS_PORT": "0",
        # `python -m app.cli` from the temp dir finds this checkout even if not pip-installed
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **(extra_env or {}),
    }
    # Registered before migrate creates them, so a failure half-way still drops them.
    stack.callback(lambda: asyncio.run(drop_database(pg_base, db_name)))
    stack.callback(lambda: asyncio.run(drop_queue(redis_url, queue)))
    # cwd=tmp: the repo's .env file is not read
    stowage_cli(["migrate"], env, tmp)
    api_key = json.loads(stowage_cli(["apps", "create", "bench", "--json"], env, tmp))["api_key"]
    server = start_server(stack, name, [*stowage_cmd(), "serve", "--port", str(port)],
                          env=env, cwd=tmp, log_dir=tmp)
    server.wait_http(f"{base}/healthz")
    return Stowage(base, api_key, server, env, env["STOWAGE_DATABASE_URL"], tmp)
