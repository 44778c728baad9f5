"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/test_openapi_fuzz.py."""

import schemathesis

# tus PATCH bodies are raw bytes under their own media type
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
