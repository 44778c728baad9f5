"""The soak (bench/soak.py), short: a minute of mixed traffic against `stowage serve` and two
`stowage worker` processes while a receiver fails 30 % of webhooks, a worker is SIGKILLed
every few seconds and Redis is flushed once; then every attachment, event, file and the memory
of the processes are audited. STOWAGE_SOAK_SECONDS sets the length (default 60)."""

from __future__ import annotations

import os

from bench import soak
from tests.conftest import PG_BASE, REDIS_BASE


async def test_soak(tmp_path):
    seconds = float(os.environ.get("STOWAGE_SOAK_SECONDS", "60"))
    lines: list[str] = []
    result = await soak.run_soak(soak.SoakConfig(
        duration=seconds, pg=PG_BASE, redis=REDIS_BASE, workdir=tmp_path / "soak",
        quiesce_timeout=90, log=lines.append))
    report = "\n".join([*lines, "", result.table()])
    print(report)
    tails = "".join(f"\n--- {name} (tail) ---\n{tail}"
                    for name, tail in result.stats.get("log_tails", {}).items())
    assert result.ok, f"{[c.name for c in result.failed()]}\n{report}{tails}"
    assert result.stats["worker_kills"] >= 1 and result.stats["redis_flushes"] == 1
