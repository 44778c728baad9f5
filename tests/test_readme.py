"""The README's walkthrough runs as written: its shell block, pasted into bash after
`stowage dev` started, prints exactly what its `#=>` comments say, in order."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from pathlib import Path

import httpx

from tests.conftest import env_for, free_port
from tests.test_cli import STOWAGE
from tests.test_dev_e2e import dev_database, poll, tail  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A walk through it with curl"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def expected_outputs(script: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"#=>(.*)$", script, re.M)]


async def test_the_readme_walkthrough_runs_as_written(settings, dev_database, tmp_path):  # noqa: F811
    script = walkthrough()
    expected = expected_outputs(script)
    assert len(expected) >= 8, "the walkthrough lost its expected outputs"
    workdir = tmp_path / "project"
    workdir.mkdir()
    log = tmp_path / "dev.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(settings)
    env.update(STOWAGE_DATABASE_URL=dev_database, STOWAGE_PUBLIC_URL=base,
               STOWAGE_QUEUE_NAME=f"{settings.queue_name}:readme")
    with log.open("wb") as out:
        proc = await asyncio.to_thread(
            subprocess.Popen, [STOWAGE, "dev", "--port", str(port)], cwd=workdir, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async def healthy() -> bool:
            assert proc.poll() is None, "stowage dev exited early" + tail(log)
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{base}/readyz", timeout=1)).status_code == 200
            return False
        await poll(healthy, 60, "/readyz", log)
        run = await asyncio.to_thread(
            subprocess.run, ["bash", "-euo", "pipefail", "-c", script], cwd=workdir,
            env={**env, "BASE": base, "STOWAGE": STOWAGE}, capture_output=True, text=True,
            timeout=120)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    assert run.returncode == 0, run.stdout + run.stderr + tail(log)
    assert run.stdout.splitlines() == expected, run.stdout + run.stderr
