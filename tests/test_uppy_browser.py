"""Uppy in a real browser with an upload token (issue 24): Debian's Chromium opens a page of
another origin whose tiny back-end mints a token with its API key (the browser never sees
the key); Uppy's tus plugin uploads a file with the token, reads Stowage-Attachment-Id, and
the page reads its attachment with the token. A second file with the same token is refused
(one use).

Uppy comes from the npm registry (`npm pack uppy@UPPY_VERSION`, once, into
~/.cache/stowage-tests): its dist bundle, as a page would load it."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import service as auth
from app.main import create_app
from tests.conftest import free_port, fresh_resources, make_settings
from tests.test_dashboard_browser import CHROMIUM_ARGS, chromium, served  # noqa: F401

pytestmark = pytest.mark.slow

UPPY_VERSION = "4.18.3"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stowage-tests"

PAGE = """<!doctype html><meta charset="utf-8"><title>uppy</title>
<script type="module">
import { Uppy, Tus } from "/uppy.min.mjs";
window.runUpload = async (endpoint, names) => {
  const tokens = new Map();
  const out = {files: {}, minted: 0};
  async function tokenFor(file) {
    if (!tokens.has(file.id)) {
      const r = await fetch("/upload-token", {method: "POST"});
      tokens.set(file.id, (await r.json()).token);
      out.minted += 1;
    }
    return tokens.get(file.id);
  }
  const uppy = new Uppy({autoProceed: false});
  uppy.use(Tus, {
    endpoint, retryDelays: [], removeFingerprintOnSuccess: true,
    async onBeforeRequest(req, file) {
      req.setHeader("Authorization", `Bearer ${await tokenFor(file)}`);
    },
    onAfterResponse(req, res) {
      const id = res.getHeader("Stowage-Attachment-Id");
      if (id) out.attachment = id;
    },
  });
  for (const name of names) {
    uppy.addFile({name, type: "text/plain", data: new Blob([`hello from ${name}`])});
  }
  const result = await uppy.upload();
  out.successful = result.successful.map(f => f.name);
  out.failed = result.failed.map(f => [f.name, String(f.error)]);
  if (out.attachment) {
    const token = tokens.get(result.successful[0].id);
    const r = await fetch(new URL(`/v1/attachments/${out.attachment}`, endpoint),
                          {headers: {Authorization: `Bearer ${token}`}});
    out.read = {status: r.status, body: await r.json()};
    const list = await fetch(new URL("/v1/attachments", endpoint),
                             {headers: {Authorization: `Bearer ${token}`}});
    out.list_status = list.status;
  }
  return out;
};
window.ready = true;
</script>"""


def uppy_bundle() -> Path:
    """Uppy's ES module bundle, fetched from the npm registry once."""
    target = CACHE / f"uppy-{UPPY_VERSION}" / "uppy.min.mjs"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", f"uppy@{UPPY_VERSION}", "--pack-destination",
                              str(target.parent)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"npm pack uppy failed: {out.stderr[-1000:]}"
        with tarfile.open(target.parent / f"uppy-{UPPY_VERSION}.tgz") as tar:
            member = tar.extractfile("package/dist/uppy.min.mjs")
            assert member is not None
            target.write_bytes(member.read())
    return target


class BackEnd:
    """The front-end's own server: its page, Uppy, and POST /upload-token, which mints a
    token with the API key only it holds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api = ""
        self.api_key = ""
        self.minted: list[dict[str, Any]] = []

    def handler(self) -> type[SimpleHTTPRequestHandler]:
        backend = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if self.path != "/upload-token":
                    self.send_error(404)
                    return
                r = httpx.post(f"{backend.api}/v1/upload-tokens", timeout=10,
                               headers={"Authorization": f"Bearer {backend.api_key}"},
                               json={"profile": "default", "record_type": "user",
                                     "record_id": "42", "record_name": "avatar",
                                     "metadata": {"via": "uppy"}, "max_size": 1000})
                backend.minted.append(r.json())
                body = r.content
                self.send_response(r.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def back_end(tmp_path: Path) -> Iterator[tuple[str, BackEnd]]:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    (root / "uppy.min.mjs").write_bytes(uppy_bundle().read_bytes())
    backend = BackEnd(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 partial(backend.handler(), directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", backend
    finally:
        server.shutdown()
        server.server_close()


async def test_uppy_uploads_with_an_upload_token(tmp_path, database_url, chromium,  # noqa: F811
                                                 back_end):
    from playwright.async_api import async_playwright

    origin, backend = back_end
    port = free_port()
    settings = make_settings(tmp_path, database_url, public_url=f"http://127.0.0.1:{port}",
                             cors_origins=origin)
    async with fresh_resources(settings) as res, \
            served(create_app(settings, res), port) as base, async_playwright() as pw:
        new = await auth.create_app(res.pool, "front-end")
        key = await auth.create_key(res.pool, new.app_id, ("upload",))
        backend.api, backend.api_key = base, key.api_key
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                           headless=True)
        try:
            page = await browser.new_page()
            page.set_default_timeout(30_000)
            await page.goto(f"{origin}/index.html")
            await page.wait_for_function("window.ready === true")
            out = await page.evaluate("([e, n]) => window.runUpload(e, n)",
                                      [f"{base}/v1/tus/", ["avatar.txt"]])
        finally:
            await browser.close()
        assert out["failed"] == [] and out["successful"] == ["avatar.txt"], json.dumps(out)
        assert out["minted"] == 1 and len(backend.minted) == 1
        assert out["read"]["status"] == 200, out
        att = out["read"]["body"]
        assert att["id"] == out["attachment"] and att["size"] == len("hello from avatar.txt")
        assert att["record"] == {"type": "user", "id": "42", "name": "avatar"}
        assert att["client_metadata"] == {"via": "uppy"}
        assert att["filename"] == "avatar.txt"
        assert out["list_status"] == 403  # a token reads what it made, nothing more
        # the token is used up: presented again for a new upload, 401
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.post("/v1/attachments/raw", content=b"again", headers={
                "Authorization": f"Bearer {backend.minted[0]['token']}"})
            assert r.status_code == 401
