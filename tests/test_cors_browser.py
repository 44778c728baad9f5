"""CORS in a real browser: Debian's Chromium (Playwright) opens a page served from another
origin (a static HTTP server on another port of 127.0.0.1), whose script calls the API with
fetch: an upload (multipart, with Authorization), a read of it, a tus upload, a 401. With the
page's origin in STOWAGE_CORS_ORIGINS it reads every answer and the headers it needs; without,
the browser refuses them ("Failed to fetch")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.auth import service as auth
from app.main import create_app
from tests.conftest import free_port, fresh_resources, make_settings
from tests.test_dashboard_browser import CHROMIUM_ARGS, chromium, served  # noqa: F401

PAGE = """<!doctype html><meta charset="utf-8"><title>front-end</title><p>a front-end</p>"""

# Runs in the page. Each step records what the page could read, or the error fetch raised.
SCRIPT = """
async ([base, key]) => {
  const out = {};
  const auth = {Authorization: `Bearer ${key}`};
  try {
    const form = new FormData();
    form.append("file", new Blob(["hello from a browser"], {type: "text/plain"}), "hi.txt");
    form.append("metadata", JSON.stringify({from: "browser"}));
    const r = await fetch(`${base}/v1/attachments`, {method: "POST", headers: auth, body: form});
    out.upload = {status: r.status, location: r.headers.get("Location"),
                  body: await r.json()};
    const g = await fetch(new URL(out.upload.location, base), {headers: auth});
    out.read = {status: g.status, body: await g.json()};
  } catch (e) { out.upload_error = String(e); }
  try {
    const r = await fetch(`${base}/v1/attachments`);
    out.unauthorized = {status: r.status, type: r.headers.get("Content-Type"),
                        body: await r.json()};
  } catch (e) { out.unauthorized_error = String(e); }
  try {
    const bytes = new TextEncoder().encode("tus from a browser");
    const tus = {...auth, "Tus-Resumable": "1.0.0"};
    const c = await fetch(`${base}/v1/tus/`, {method: "POST", headers: {...tus,
      "Upload-Length": String(bytes.length), "Upload-Metadata": `filename ${btoa("t.txt")}`}});
    const url = c.headers.get("Location");
    const p = await fetch(url, {method: "PATCH", body: bytes, headers: {...tus,
      "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}});
    out.tus = {created: c.status, location: url, patched: p.status,
               offset: p.headers.get("Upload-Offset"),
               attachment: p.headers.get("Stowage-Attachment-Id")};
  } catch (e) { out.tus_error = String(e); }
  return out;
}
"""


@pytest.fixture
def front_end(tmp_path: Path) -> Iterator[str]:
    """The page's own origin: a static server on another port."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(PAGE)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def run_page(tmp_path: Path, database_url: str, chromium: str,  # noqa: F811
                   front_end: str, cors_origins: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    port = free_port()
    settings = make_settings(tmp_path, database_url, public_url=f"http://127.0.0.1:{port}",
                             cors_origins=cors_origins)
    async with fresh_resources(settings) as res, \
            served(create_app(settings, res), port) as base, async_playwright() as pw:
        tenant = await auth.create_app(res.pool, "browser")
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                           headless=True)
        try:
            page = await browser.new_page()
            page.set_default_timeout(15_000)
            await page.goto(f"{front_end}/index.html")
            assert await page.title() == "front-end"
            return await page.evaluate(SCRIPT, [base, tenant.api_key])
        finally:
            await browser.close()


async def test_a_page_of_a_configured_origin_uploads_and_reads(tmp_path, database_url,
                                                               chromium, front_end):  # noqa: F811
    out = await run_page(tmp_path, database_url, chromium, front_end,
                         cors_origins=f"https://other.example,{front_end}")
    assert "upload_error" not in out, out
    up = out["upload"]
    assert up["status"] == 201
    assert up["location"] and up["location"].endswith(f"/v1/attachments/{up['body']['id']}")
    assert up["body"]["client_metadata"] == {"from": "browser"}
    assert out["read"]["status"] == 200
    assert out["read"]["body"]["id"] == up["body"]["id"]
    assert out["read"]["body"]["size"] == len("hello from a browser")
    # an error is an answer the page can read, not an opaque failure
    assert out["unauthorized"]["status"] == 401, out
    assert out["unauthorized"]["type"] == "application/problem+json"
    assert out["unauthorized"]["body"]["status"] == 401
    # tus: the preflights of its headers pass, and the page reads the headers tus needs
    assert "tus_error" not in out, out
    assert out["tus"]["created"] == 201 and out["tus"]["patched"] == 204
    assert out["tus"]["offset"] == str(len("tus from a browser"))
    assert out["tus"]["attachment"]


async def test_a_page_of_another_origin_is_refused(tmp_path, database_url, chromium,  # noqa: F811
                                                   front_end):
    out = await run_page(tmp_path, database_url, chromium, front_end, cors_origins="")
    assert out["upload_error"] == "TypeError: Failed to fetch", out
    assert out["unauthorized_error"] == "TypeError: Failed to fetch", out
    assert out["tus_error"] == "TypeError: Failed to fetch", out
