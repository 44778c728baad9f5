"""`stowage serve` with several processes on one port (issue 19): what one process did, all of
them do together — one /metrics summed over them, a revoked key refused by each at once, a tus
upload resumed on whichever process takes the next PATCH, SIGTERM draining every one, a
process that dies replaced, and no process left serving when the supervisor is killed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.auth import service as auth
from tests.conftest import env_for, free_port, process, wait_http

TUS = {"Tus-Resumable": "1.0.0"}


def children(pid: int) -> list[int]:
    """The live API processes `pid` started (from /proc: no psutil needed); not the
    resource tracker that multiprocessing starts beside them."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command may hold spaces and parentheses: the fields after its last ")" are fixed
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in Path(
                f"/proc/{entry}/cmdline").read_bytes():
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s")
        time.sleep(0.1)


@pytest.fixture
def serve(tmp_path, res) -> Iterator[tuple[str, object, Path]]:
    """`stowage serve --workers 2`, its metrics directory named so the test can look in it."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**env_for(res.settings), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with process(["serve", "--port", str(port), "--workers", "2"], env,
                 tmp_path / "api.log") as api:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        wait_until(lambda: len(children(api.pid)) >= 2)
        yield base, api, metrics_dir


def fresh(base: str, method: str, path: str, **kw) -> httpx.Response:
    """One request on a connection of its own: the kernel hands each new connection to
    whichever process accepts first, so a run of these reaches both."""
    with httpx.Client(base_url=base, timeout=10) as c:
        return c.request(method, path, headers={"Connection": "close", **kw.pop("headers", {})},
                         **kw)


async def test_two_processes_serve_one_port_and_sum_their_metrics(serve, tenant):
    base, api, metrics_dir = serve
    procs = children(api.pid)
    assert len(procs) == 2
    for i in range(30):
        r = fresh(base, "POST", "/v1/attachments/raw?promote=false", content=b"x" * (i + 1),
                  headers=tenant.headers)
        assert r.status_code == 201, r.text
    # each process keeps its own counters in the shared directory...
    served = {int(m.group(1)) for f in metrics_dir.iterdir()
              if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))}
    assert served <= set(procs) | {api.pid}
    # ...and /metrics, from whichever process answers, adds them all up
    for _ in range(4):
        text = fresh(base, "GET", "/metrics").text
        ok = re.search(r'^stowage_uploads_total\{mode="raw",outcome="ok"\} (\S+)$', text, re.M)
        assert ok and float(ok.group(1)) == 30.0, text[:2000]
        size = re.search(r'^stowage_upload_bytes_total\{mode="raw"\} (\S+)$', text, re.M)
        assert size and float(size.group(1)) == sum(range(1, 31))
        # a gauge read at scrape time is shown once, not once per process
        assert len(re.findall(r'^stowage_attachments\{state="cached"\} ', text, re.M)) == 1


async def test_both_processes_take_uploads(serve, tenant):
    """The load spreads: uploads on fresh connections reach both processes (each process
    counts its own uploads in its own file of the metrics directory)."""
    base, api, metrics_dir = serve

    def uploads_by_process() -> dict[str, int]:
        return {f.name: f.stat().st_size for f in metrics_dir.glob("counter_*.db")}

    for _ in range(60):
        assert fresh(base, "POST", "/v1/attachments/raw?promote=false", content=b"y",
                     headers=tenant.headers).status_code == 201
    counter_files = {int(f.name[8:-3]) for f in metrics_dir.glob("counter_*.db")}
    assert set(children(api.pid)) <= counter_files, (children(api.pid), uploads_by_process())


async def test_a_revoked_key_is_refused_by_every_process_at_once(serve, res):
    base, _, _ = serve
    made = await auth.create_app(res.pool, "revoked")
    headers = {"Authorization": f"Bearer {made.api_key}"}
    for _ in range(10):  # each process has seen (and may keep) the key
        assert fresh(base, "GET", "/v1/attachments", headers=headers).status_code == 200
    await auth.revoke_key(res.pool, made.key_id)
    for _ in range(20):
        assert fresh(base, "GET", "/v1/attachments", headers=headers).status_code == 401


async def test_a_tus_upload_resumes_on_whichever_process_takes_the_patch(serve, tenant):
    base, _, _ = serve
    data = os.urandom(64 * 1024)
    r = fresh(base, "POST", "/v1/tus/", headers={**TUS, **tenant.headers,
                                                 "Upload-Length": str(len(data))})
    assert r.status_code == 201, r.text
    url = r.headers["location"]
    path = url[url.index("/v1/"):]
    step = 4096
    for offset in range(0, len(data), step):
        r = fresh(base, "PATCH", path, content=data[offset:offset + step], headers={
            **TUS, **tenant.headers, "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == 204, r.text
    att = r.headers["stowage-attachment-id"]
    got = fresh(base, "GET", f"/v1/attachments/{att}/content", headers=tenant.headers)
    assert got.status_code == 200 and got.content == data


async def test_sigterm_lets_every_process_finish_its_upload_then_exits_0(serve, tenant):
    base, api, _ = serve
    procs = children(api.pid)
    port = int(base.rsplit(":", 1)[1])
    body = b"z" * (2 * 1024 * 1024)
    socks = []
    for _ in range(4):  # uploads in flight on (very likely) both processes
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall((f"POST /v1/attachments/raw?promote=false HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {tenant.api_key}\r\nConnection: close\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:1024])
        socks.append(s)
    await asyncio.sleep(0.5)  # the requests are read by their processes
    api.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)  # the shutdown has begun: the requests in flight may finish
    answers = []
    for s in socks:
        s.sendall(body[1024:])
        answers.append(s.makefile("rb").readline())
        s.close()
    assert all(a.startswith(b"HTTP/1.1 201") for a in answers), answers
    assert api.wait(30) == 0
    wait_until(lambda: not any(alive(p) for p in procs), within=10)


async def test_a_process_that_dies_is_replaced(serve, tenant):
    base, api, _ = serve
    victim = children(api.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in children(api.pid) and len(children(api.pid)) == 2)
    for _ in range(10):
        assert fresh(base, "GET", "/v1/attachments", headers=tenant.headers).status_code == 200


async def test_no_process_serves_on_once_the_supervisor_is_killed(serve):
    base, api, _ = serve
    procs = children(api.pid)
    api.send_signal(signal.SIGKILL)
    api.wait(10)
    wait_until(lambda: not any(alive(p) for p in procs), within=15)
    with pytest.raises(httpx.TransportError):
        fresh(base, "GET", "/healthz")
