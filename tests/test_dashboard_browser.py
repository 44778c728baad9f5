"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real app
served by uvicorn on a free port (in this test's event loop, with the test's resources).

An operator logs in, watches an upload appear, opens its timeline, and retries a webhook
delivery that failed. A screenshot of each page is kept under $STOWAGE_SCREENSHOTS (or the
test's tmp_path) and its path printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.auth import service as auth
from tests.conftest import free_port, fresh_resources, run_worker
from tests.helpers import jpeg_bytes
from tests.receiver import Receiver, Reply
from tests.test_dashboard import TOKEN, build_app, dashboard_settings

CHROMIUM = "/usr/bin/chromium"
# Never let Playwright fetch a browser of its own: the system one, quiet and offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def chromium() -> str:
    assert Path(CHROMIUM).exists(), "needs Debian's chromium: apt-get install -y chromium"
    return CHROMIUM


@pytest.fixture
def shots(tmp_path: Path, request) -> Path:
    root = Path(os.environ.get("STOWAGE_SCREENSHOTS") or tmp_path / "screenshots")
    directory = root / request.node.name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.asynccontextmanager
async def served(app, port: int) -> AsyncIterator[str]:
    """uvicorn on 127.0.0.1:port in this event loop, where the app's resources live."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # it failed to start: raise why
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def test_operator_walkthrough(tmp_path, database_url, receiver, shots, chromium, capsys):
    from playwright.async_api import async_playwright

    port = free_port()
    settings = dashboard_settings(tmp_path, database_url, public_url=f"http://127.0.0.1:{port}")
    saved: list[Path] = []
    console_errors: list[str] = []
    dialogs: list[str] = []

    async with fresh_resources(settings) as res, served(build_app(res), port) as base, \
            httpx.AsyncClient(base_url=base) as api, async_playwright() as pw:
        tenant = await auth.create_app(res.pool, "acme")
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        receiver.default = Reply(500)  # every delivery fails until the operator steps in
        r = await api.post("/v1/webhook-endpoints", headers=headers, json={"url": receiver.url})
        assert r.status_code == 201, r.text
        endpoint_id = r.json()["id"]

        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                           headless=True)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)

        def on_console(message) -> None:
            # the refused login answers 401 on purpose; anything else is a fault (a CSP
            # violation, a script error, a missing file)
            if message.type == "error" and not message.location.get("url", "").endswith(
                    "/dashboard/login"):
                console_errors.append(f"{message.text} ({message.location.get('url')})")

        page.on("console", on_console)

        async def accept(dialog) -> None:
            dialogs.append(dialog.message)
            await dialog.accept()

        page.on("dialog", accept)

        async def shot(name: str) -> None:
            path = shots / f"{len(saved) + 1:02d}-{name}.png"
            await page.screenshot(path=str(path), full_page=True)
            saved.append(path)

        try:
            # no session: the login form, which refuses a wrong token
            await page.goto(f"{base}/dashboard/attachments")
            assert "/dashboard/login" in page.url
            await page.fill("#token", "not-the-token")
            await page.click("button[type=submit]")
            await page.wait_for_selector("text=That is not the admin token.")
            await shot("login-refused")
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/dashboard/attachments")

            # an upload appears in the list by itself (auto-refresh), no reload
            await page.check("#autorefresh")
            r = await api.post("/v1/attachments", headers=headers,
                               data={"profile": "avatar", "record_type": "user",
                                     "record_id": "42", "record_name": "avatar"},
                               files={"file": ("cat.jpg", jpeg_bytes(120, 80))})
            assert r.status_code == 201, r.text
            att_id = r.json()["id"]
            row = page.locator(f'tr[data-id="{att_id}"]')
            await row.wait_for()
            assert "cached" in await row.inner_text()
            await shot("attachments-upload-appeared")

            # the worker promotes it; both of its webhook deliveries fail (500, then the retry)
            await run_worker(res)
            await row.locator("td >> nth=2").filter(has_text="stored").wait_for()
            await page.uncheck("#autorefresh")

            # its page: previews through signed URLs, and the timeline
            await row.locator("a").first.click()
            await page.wait_for_url(f"{base}/dashboard/attachments/{att_id}")
            await page.locator('[data-kind="stored"]').wait_for()
            thumb = page.locator('img[data-derivative="thumb"]')
            await thumb.wait_for()
            assert await thumb.evaluate("img => img.complete && img.naturalWidth") > 0
            original = page.locator("#preview-original")
            assert await original.evaluate("img => img.complete && img.naturalWidth") == 120
            kinds = await page.locator("#timeline li").evaluate_all(
                "items => items.map(li => li.dataset.kind)")
            assert kinds[:2] == ["uploaded", "promotion.requested"]
            assert kinds.count("event") == 2 and kinds.count("webhook.attempt") == 4
            assert await page.locator("#timeline li.bad").count() == 4  # the failed attempts
            await shot("attachment-timeline")

            # the endpoint's delivery log: failing; retry one delivery
            await page.click("header nav >> text=Webhooks")
            await page.wait_for_url(f"{base}/dashboard/webhooks")
            await page.locator(f'tr[data-id="{endpoint_id}"] >> text=failing').wait_for()
            await page.click(f'tr[data-id="{endpoint_id}"] a')
            await page.wait_for_url(f"{base}/dashboard/webhooks/{endpoint_id}")
            failed = page.locator('tbody[data-status="failed"]')
            assert await failed.count() == 2
            await failed.first.locator("summary").click()  # request + attempts, 500s
            await page.locator("text=attachment.stored").first.wait_for()
            await shot("endpoint-deliveries-failed")

            receiver.default = Reply(200)
            delivery_id = await failed.first.get_attribute("data-id")
            await failed.first.locator("button.retry").click()
            await page.wait_for_selector("text=Delivery queued again.")
            assert dialogs == ["Deliver this event again now?"]
            assert await page.locator(
                f'tbody[data-id="{delivery_id}"][data-status="pending"]').count() == 1
            await run_worker(res)
            await page.reload()
            await page.locator(f'tbody[data-id="{delivery_id}"][data-status="delivered"]'
                               ).wait_for()
            assert await page.locator('tbody[data-status="failed"]').count() == 1
            await shot("endpoint-delivery-retried")

            # and the overview, with the chart
            await page.click("header nav >> text=Overview")
            await page.wait_for_url(f"{base}/dashboard")
            assert await page.locator("#chart rect.uploads").count() == 24
            assert await page.locator('[data-state="stored"]').inner_text() == "1"
            await shot("overview")
        finally:
            await browser.close()

    assert console_errors == []  # e.g. the CSP blocked nothing of ours
    assert len(saved) == 6 and all(size > 5_000 for size in sizes(saved))
    with capsys.disabled():
        print("\ndashboard screenshots:")
        for p in saved:
            print(f"  {p}")


def sizes(paths: list[Path]) -> list[int]:
    return [p.stat().st_size for p in paths]


async def test_the_dashboard_fits_a_phone(tmp_path, database_url, shots, chromium):
    """390 px wide: no page wider than the screen; wide tables scroll inside themselves."""
    from playwright.async_api import async_playwright

    port = free_port()
    settings = dashboard_settings(tmp_path, database_url, public_url=f"http://127.0.0.1:{port}")
    async with fresh_resources(settings) as res, served(build_app(res), port) as base, \
            httpx.AsyncClient(base_url=base) as api, async_playwright() as pw:
        for i in range(3):
            tenant = await auth.create_app(res.pool, f"a-rather-long-app-name-number-{i}")
            r = await api.post("/v1/attachments",
                               headers={"Authorization": f"Bearer {tenant.api_key}"},
                               files={"file": (f"a-long-file-name-{i}.jpg", jpeg_bytes())})
            assert r.status_code == 201, r.text
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                           headless=True)
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        try:
            await page.goto(f"{base}/dashboard/login")
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            for path, name in (("/dashboard", "overview"),
                               ("/dashboard/attachments", "attachments"),
                               ("/dashboard/webhooks", "webhooks")):
                await page.goto(base + path)
                await page.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
                page_width = await page.evaluate("document.documentElement.scrollWidth")
                assert page_width <= 390, (path, page_width)
                tables = await page.evaluate(
                    "[...document.querySelectorAll('table')].map(t => [t.clientWidth,"
                    " t.scrollWidth, getComputedStyle(t).overflowX])")
                for client_width, scroll_width, overflow in tables:
                    assert client_width <= 390
                    assert scroll_width <= client_width or overflow == "auto", (path, tables)
        finally:
            await browser.close()
