"""Malware scanning of an attachment's file with ClamAV (profiles with `scan = true`): the
verdict, what goes into `metadata.scan`, and the errors the lifecycle tells apart — an
infected file (a verdict), a file clamd can never scan (too large: a permanent failure, never
a pass) and clamd not answering (ScannerUnavailable: the file waits, unstored)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.errors import ScannerUnavailable
from app.observability import metrics
from app.scan import Clamd, ClamdError, ClamdUnavailable, ScanTooLarge
from app.storage import Storage


class Unscannable(Exception):
    """This file can never be scanned by this clamd: the attachment fails (`code`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Verdict:
    clean: bool
    signature: str | None
    # metadata.scan, as API.md states it
    metadata: dict[str, Any]


class Scanner:
    def __init__(self, clamd: Clamd | None) -> None:
        self.clamd = clamd

    @property
    def configured(self) -> bool:
        return self.clamd is not None

    async def scan(self, storage: Storage, key: str) -> Verdict:
        """Stream the object to clamd (chunk by chunk, never whole in memory)."""
        if self.clamd is None:  # the start-up check refuses this; a profile changed since
            raise ScannerUnavailable("a profile scans its files and STOWAGE_CLAMD_URL is not"
                                     " set")
        started = time.perf_counter()
        try:
            result = await self.clamd.scan(storage.read(key))
        except ScanTooLarge as e:
            metrics.SCANS.labels("too_large").inc()
            raise Unscannable("scan_too_large", f"the file is larger than the scanner takes"
                              f" ({e}); it was not stored unscanned") from e
        except (ClamdUnavailable, ClamdError) as e:
            metrics.SCANS.labels("unavailable").inc()
            raise ScannerUnavailable(f"clamd: {e}") from e
        metrics.SCAN_SECONDS.observe(time.perf_counter() - started)
        metrics.SCAN_BYTES.inc(result.bytes_scanned)
        metrics.SCANS.labels("clean" if result.clean else "infected").inc()
        scan: dict[str, Any] = {
            "engine": result.engine, "database": result.database,
            "result": "clean" if result.clean else "infected",
            "scanned_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if not result.clean:
            scan["signature"] = result.signature
        return Verdict(clean=result.clean, signature=result.signature, metadata=scan)
