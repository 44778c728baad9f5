"""The OpenAPI document is the contract: schemathesis fuzzes the live app against it and must
find no 5xx and no response the document does not describe."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.auth import service as auth
from tests.conftest import env_for, free_port, process, wait_http

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
])


async def test_schemathesis_finds_no_server_errors_or_contract_breaks(settings, res, tmp_path):
    new = await auth.create_app(res.pool, "fuzz")
    port = free_port()
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    # long-polls on real, cached attachments would each hold a request for up to 60 s
    env = {**env_for(settings), "STOWAGE_LONG_POLL_MAX": "1"}
    with process(["serve", "--port", str(port)], env, tmp_path / "api.log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        run = await asyncio.to_thread(
            subprocess.run,
            [st, "run", f"http://127.0.0.1:{port}/openapi.json",
             "-H", f"Authorization: Bearer {new.api_key}",
             "--checks", CHECKS, "--max-examples", os.environ.get("STOWAGE_FUZZ_EXAMPLES", "15"),
             "--seed", "20261125", "--workers", "1", "--no-color",
             ],
            capture_output=True, text=True, timeout=600,
            env={**os.environ,
                 "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("schemathesis_hooks.py"))},

        )
    (tmp_path / "st.out").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
