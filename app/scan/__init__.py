"""Malware scanning: a small asyncio client for a ClamAV daemon (clamd), spoken directly.

The lifecycle (promotion, rescan) and the readiness checks build on `Clamd`; this package
knows nothing of attachments, HTTP or jobs.
"""

from app.scan.clamd import (
    Clamd,
    ClamdError,
    ClamdUnavailable,
    ClamdVersion,
    ScanError,
    ScanResult,
    ScanTooLarge,
    parse_clamd_url,
)

__all__ = [
    "Clamd",
    "ClamdError",
    "ClamdUnavailable",
    "ClamdVersion",
    "ScanError",
    "ScanResult",
    "ScanTooLarge",
    "parse_clamd_url",
]
