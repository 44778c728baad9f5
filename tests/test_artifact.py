"""What users install is what this tests: the wheel, in a fresh venv, run from an unrelated
folder by a user that cannot write the venv, with the installed commands only.

The wheel is built from this checkout; nothing of the checkout is importable by the processes
(no PYTHONPATH, another working directory, the venv's own site-packages). Settings are the
defaults but for the database (a fresh one), the queue name (this run's own) and the two
values a deployment must set: the secret key and the admin token. The two workers share every
setting, the metrics port included, as two workers on one host do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import PG_BASE, REDIS_BASE, REDIS_DB, RUN_ID, free_port
from tests.test_ops import sample

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def _quiet(args: list[str], cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"


def _base_python() -> str:
    """The interpreter for the fresh venv. A venv links to its base interpreter, and this
    machine's default one lives under /root, which the unprivileged user cannot enter: as root,
    take the distribution's python3 (what a server has) when it is recent enough."""
    system = "/usr/bin/python3"
    if os.geteuid() == 0 and os.path.exists(system):
        version = subprocess.run([system, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                                 capture_output=True, text=True)
        if version.stdout.strip() == "True":
            return system
    return sys.executable


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """A fresh venv with the wheel built from this checkout installed in it (root-owned,
    world-readable: the user that runs it cannot write it)."""
    top = Path(tempfile.mkdtemp(prefix="stowage-artifact-"))
    top.chmod(0o755)
    try:
        wheels = top / "wheels"
        _quiet([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                "--wheel-dir", str(wheels), str(ROOT)], cwd=top)
        (wheel,) = wheels.glob("stowage-*.whl")
        venv = top / "venv"
        subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
        _quiet([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
               cwd=top)
        yield venv
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """An unrelated folder owned by the user that runs the service."""
    path = Path(tempfile.mkdtemp(prefix="stowage-run-"))
    path.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
async def database() -> Any:
    name = f"stowage_artifact_{RUN_ID}"
    # the user is named: the processes run as `nobody`, which has no role of its own
    yield name, f"postgresql://postgres@{PG_BASE.removeprefix('postgresql://')}/{name}"
    conn = await asyncpg.connect(f"{PG_BASE}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class Installed:
    """Runs the venv's `stowage` as the unprivileged user, in the working folder."""

    def __init__(self, venv: Path, cwd: Path, env: dict[str, str]) -> None:
        self.stowage = str(venv / "bin" / "stowage")
        self.python = str(venv / "bin" / "python")
        self.cwd = cwd
        self.env = env
        as_nobody = os.geteuid() == 0 and os.access(self.python, os.X_OK) and \
            os.path.realpath(self.python).startswith("/usr/")
        self.user = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_nobody else {}
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([self.stowage, *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=120, **self.user)
        if check:
            assert done.returncode == 0, f"stowage {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.cwd / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([self.stowage, *args], cwd=self.cwd, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, **self.user)
        self.procs.append((proc, log))
        return proc

    def logs(self) -> str:
        return "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
                       for _, log in self.procs if log.exists())

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for proc, _ in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc, log in self.procs:
            try:
                codes[log.stem] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[log.stem] = None
        return codes


def _wait(predicate, within: float, what: str, service: Installed) -> Any:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.HTTPError):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s" + service.logs())
        time.sleep(0.1)


def _metrics_port(log: Path) -> int | None:
    found = re.search(r"worker metrics on http://[^:]+:(\d+)/metrics", log.read_text())
    return int(found.group(1)) if found else None


def test_the_installed_wheel_runs_the_whole_lifecycle(installed, workdir, database) -> None:
    _, dsn = database
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "STOWAGE_DATABASE_URL": dsn,
        "STOWAGE_REDIS_URL": f"{REDIS_BASE}/{REDIS_DB}",
        "STOWAGE_QUEUE_NAME": f"stowage:artifact:{RUN_ID}",
        "STOWAGE_SECRET_KEY": secrets.token_hex(32),
        "STOWAGE_ADMIN_TOKEN": "artifact-admin-token",
        "STOWAGE_LOG_FORMAT": "text",
    }
    svc = Installed(installed, workdir, env)

    # the processes import the installed package, not this checkout
    where = subprocess.run([svc.python, "-c", "import app, worker; print(app.__file__)"],
                           cwd=workdir, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(installed)), where.stdout

    assert "ok: this install is complete" in svc.run("check").stdout
    assert re.match(r"applied [1-9]\d* migration", svc.run("migrate").stdout)
    assert svc.run("migrate").stdout.startswith("applied 0 migration")
    key = json.loads(svc.run("apps", "create", "artifact", "--json").stdout)
    headers = {"Authorization": f"Bearer {key['api_key']}"}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        svc.start("api", "serve", "--port", str(port))
        w1 = svc.start("worker1", "worker")
        _wait(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 30,
              "API ready", svc)
        _wait(lambda: _metrics_port(svc.procs[1][1]), 30, "worker 1 metrics", svc)
        w2 = svc.start("worker2", "worker")
        _wait(lambda: _metrics_port(svc.procs[2][1]), 30, "worker 2 metrics", svc)
        ports = [_metrics_port(log) for _, log in svc.procs[1:]]
        assert ports[0] != ports[1], ports
        assert w1.poll() is None and w2.poll() is None, svc.logs()

        assert "problems found" not in svc.run("doctor").stdout

        def upload(body: bytes) -> dict:
            r = httpx.post(f"{base}/v1/attachments", headers=headers, timeout=30,
                           files={"file": ("hello.txt", body, "text/plain")})
            assert r.status_code == 201, r.text
            r = httpx.get(f"{base}/v1/attachments/{r.json()['id']}?wait=30", headers=headers,
                          timeout=40)
            assert r.json()["state"] == "stored", r.text
            return r.json()

        def jobs_done(metrics_port: int) -> float:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            return sample(text, "stowage_jobs_total", function="promote", outcome="stored")

        # each worker takes jobs: with the other one stopped, only it can have promoted
        for stopped, metrics_port in ((w2, ports[0]), (w1, ports[1])):
            before = jobs_done(metrics_port)
            os.kill(stopped.pid, signal.SIGSTOP)
            try:
                upload(secrets.token_bytes(1000))
            finally:
                os.kill(stopped.pid, signal.SIGCONT)
            assert jobs_done(metrics_port) == before + 1, svc.logs()

        body = b"the artifact is the product\n" * 1000
        att = upload(body)
        r = httpx.get(f"{base}/v1/attachments/{att['id']}/content", headers=headers, timeout=10)
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == att["sha256"]
        r = httpx.delete(f"{base}/v1/attachments/{att['id']}", headers=headers, timeout=10)
        assert r.status_code in (200, 202, 204), r.text

        def gone() -> bool:
            r = httpx.get(f"{base}/v1/attachments/{att['id']}", headers=headers, timeout=5)
            return r.json()["state"] == "deleted" and not [
                p for p in (workdir / "var" / "store").rglob("*")
                if p.is_file() and att["id"] in str(p)]
        _wait(gone, 30, "deleted and its file removed", svc)

        login = httpx.get(f"{base}/dashboard/login", timeout=10)
        assert login.status_code == 200 and "<form" in login.text, login.text[:500]
        css = httpx.get(f"{base}/dashboard/static/dashboard.css", timeout=10)
        assert css.status_code == 200 and len(css.content) > 100
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert sample(metrics, "stowage_uploads_total", mode="multipart", outcome="ok") >= 3
        # the default storage, file://./var/..., is under the folder the service runs in
        assert (workdir / "var" / "store").is_dir() and (workdir / "var" / "cache").is_dir()
    finally:
        codes = svc.stop_all()
    assert codes == {"api": 0, "worker1": 0, "worker2": 0}, svc.logs()


def test_the_installed_dev_command_serves_and_promotes(installed, workdir, database) -> None:
    _, dsn = database
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "HOME": str(workdir),
        "STOWAGE_DATABASE_URL": dsn,
        "STOWAGE_REDIS_URL": f"{REDIS_BASE}/{REDIS_DB}",
        "STOWAGE_QUEUE_NAME": f"stowage:artifact-dev:{RUN_ID}",
    }
    svc = Installed(installed, workdir, env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        svc.start("dev", "dev", "--port", str(port))
        _wait(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 60,
              "dev ready (database created, migrated)", svc)
        key = json.loads(svc.run("apps", "create", "dev", "--json").stdout)
        r = httpx.post(f"{base}/v1/attachments/raw?filename=a.txt", content=b"dev" * 100,
                       headers={"Authorization": f"Bearer {key['api_key']}"}, timeout=10)
        assert r.status_code == 201, r.text
        r = httpx.get(f"{base}/v1/attachments/{r.json()['id']}?wait=30", timeout=40,
                      headers={"Authorization": f"Bearer {key['api_key']}"})
        assert r.json()["state"] == "stored", r.text
    finally:
        codes = svc.stop_all()
    assert codes == {"dev": 0}, svc.logs()
