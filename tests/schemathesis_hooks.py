"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/test_openapi_fuzz.py."""

import itertools
import re

import schemathesis

# tus PATCH bodies are raw bytes under their own media type
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

RECORD_SLOT = ("record_type", "record_id", "record_name")


@schemathesis.hook("filter_query")
def whole_record_slots(ctx, query):
    """OpenAPI cannot say that query parameters come together: POST /v1/attachments/raw takes
    a record slot's three parts all or none (422 otherwise, as its description says; the
    multipart and JSON bodies state it in their schemas). Queries with part of a slot are
    left out rather than counted as schema-valid requests the server refuses."""
    if ctx.operation is None or ctx.operation.path != "/v1/attachments/raw" or not query:
        return True
    return _whole(query)


@schemathesis.hook("filter_body")
def whole_record_slots_in_bodies(ctx, body):
    """POST /v1/attachments states the rule in its schemas (an anyOf of the multipart and
    JSON objects), but schemathesis 4.32.5's coverage phase draws multipart bodies it calls
    schema-valid without that anyOf (e.g. record_id and record_name without record_type):
    those are left out too. (Its negative cases of the rule are left out with them.)"""
    if ctx.operation is None or ctx.operation.path != "/v1/attachments" \
            or not isinstance(body, dict):
        return True
    return _whole(body)


def _whole(values) -> bool:
    given = [bool(values.get(name)) for name in RECORD_SLOT]
    return all(given) or not any(given)


_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_key_numbers = itertools.count()


@schemathesis.hook("map_headers")
def a_new_idempotency_key_per_request(ctx, headers):
    """Hypothesis draws the same Idempotency-Key for different requests (it shrinks to short
    values): rightly 422 (API.md: the same key with a different request), but not a refusal
    of the request itself. Each valid key drawn is made unique; invalid ones stay as drawn, for
    the negative cases. Replays are tested in tests/test_idempotency.py."""
    key = (headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and _KEY.fullmatch(key):
        suffix = f"~{next(_key_numbers)}"
        headers["Idempotency-Key"] = key[:255 - len(suffix)] + suffix
    return headers
