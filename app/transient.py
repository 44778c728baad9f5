"""Which failures are worth retrying: the network, storage and database hiccups."""

from __future__ import annotations

import botocore.exceptions

from app.db import CONNECTION_ERRORS


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout"}
    return isinstance(exc, botocore.exceptions.BotoCoreError | OSError)
