"""Which failures are worth retrying: the network, storage and database hiccups."""

from __future__ import annotations

import botocore.exceptions

from app.db import CONNECTION_ERRORS
from app.storage.base import ACCESS_DENIED_ERRNOS, DISK_FULL_ERRNOS


def is_transient(exc: BaseException) -> bool:
    # The storages turn these into their own errors (naming the path); an OSError that still
    # says "disk full" or "permission denied" comes from elsewhere (a temporary file of the
    # worker's) and is no more transient for that.
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS | ACCESS_DENIED_ERRNOS:
        return False
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout"}
    return isinstance(exc, botocore.exceptions.BotoCoreError | OSError)
