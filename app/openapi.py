"""The OpenAPI document, as the server behaves with the settings it runs with.

FastAPI generates most of it from the routes; this adds what the routes cannot say: the
Problem schema, the client metadata a client may send (ClientMetadata), the signed-link
scheme beside the API key on downloads, the profiles this server knows, and the limits that
depend on settings (STOWAGE_LONG_POLL_MAX, STOWAGE_MAX_UPLOAD_SIZE, the profiles' max_size).
tests/test_openapi_fuzz.py holds the server to it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from app import errors
from app.config import Settings
from app.profiles import Profiles, load_profiles
from app.uploads.options import MAX_METADATA_BYTES, MAX_METADATA_DEPTH

SCHEMAS = "#/components/schemas/"
# Postgres text and jsonb cannot hold a NUL: the server refuses one anywhere in metadata
NO_NUL = "^[^\\x00]*$"
METADATA_DOC = (f"A JSON object, kept as is: at most {MAX_METADATA_BYTES} bytes as compact JSON,"
                f" nested at most {MAX_METADATA_DEPTH} levels deep (the object itself is level"
                " 1), no NUL character in a key or a string (422 otherwise).")
SIGNED_LINK = "signedLink"
BEARER = "HTTPBearer"


def _problem_schema() -> dict[str, Any]:
    types = sorted(errors.problem_slugs() | {"method-not-allowed", "http-error"})
    return {
        "type": "object",
        "description": "RFC 9457 problem details. `type` is "
        f"{errors.PROBLEM_BASE}<name>, one of: {', '.join(types)}.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
        },
        "additionalProperties": True,
    }


def _metadata_schemas() -> dict[str, Any]:
    """What app/uploads/options.check_metadata accepts, as far as JSON Schema can say it (the
    size and depth limits are in the description: spelling the depth out level by level made
    schemathesis's coverage phase run for many minutes)."""
    json_value = {"$ref": SCHEMAS + "JsonValue"}
    return {
        "ClientMetadata": {
            "type": "object", "description": METADATA_DOC,
            "propertyNames": {"pattern": NO_NUL}, "additionalProperties": json_value,
        },
        "JsonValue": {
            "description": "Any JSON value without NUL characters",
            "anyOf": [
                {"type": "null"}, {"type": "boolean"}, {"type": "number"},
                {"type": "string", "pattern": NO_NUL},
                {"type": "array", "items": json_value},
                {"type": "object", "propertyNames": {"pattern": NO_NUL},
                 "additionalProperties": json_value},
            ],
        },
    }


def _slot_rule(nullable: bool) -> dict[str, Any]:
    """A record slot is all three parts or none (422 otherwise); an empty part is none."""
    slot = ("record_type", "record_id", "record_name")
    empty: dict[str, Any] = {"type": "string", "maxLength": 0}
    return {"anyOf": [
        {"properties": {name: {"anyOf": [empty, {"type": "null"}]} if nullable else empty
                        for name in slot}},
        {"required": list(slot),
         "properties": {name: {"type": "string", "minLength": 1} for name in slot}},
    ]}


def _operation(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return spec["paths"][path][method]


def _parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in operation["parameters"] if p["name"] == name)


def _profile_schema(profiles: Profiles) -> dict[str, Any]:
    # "" and no value alike mean `default`
    return {"type": "string", "enum": ["", *profiles.names()],
            "description": "a profile this server knows; empty or left out: `default`"}


def _limits_doc(settings: Settings, profiles: Profiles) -> str:
    limits = ", ".join(
        f"`{name}` {profiles.get(name).size_limit(settings.max_upload_size)}"
        for name in profiles.names())
    return (f" The file may be at most STOWAGE_MAX_UPLOAD_SIZE ({settings.max_upload_size}"
            f" bytes here) or its profile's `max_size`, whichever is lower (413): {limits}.")


# options the server refuses with a NUL in them (Postgres text cannot hold one: 422)
TEXT_OPTIONS = ("record_type", "record_id", "record_name", "filename")


def _no_nul(schema: dict[str, Any]) -> None:
    """Add the NUL rule to a string schema, or to the string branch of an anyOf."""
    for branch in [schema, *schema.get("anyOf", [])]:
        if branch.get("type") == "string":
            branch["pattern"] = NO_NUL


def _text_options_without_nul(spec: dict[str, Any]) -> None:
    for path, method in (("/v1/attachments", "get"), ("/v1/attachments/raw", "post")):
        for parameter in _operation(spec, path, method)["parameters"]:
            if parameter["name"] in TEXT_OPTIONS:
                _no_nul(parameter["schema"])
    form = _operation(spec, "/v1/attachments", "post")["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    for properties in (form, spec["components"]["schemas"]["RegisterRequest"]["properties"],
                       spec["components"]["schemas"]["PresignRequest"]["properties"]):
        for name in TEXT_OPTIONS:
            if name in properties:
                _no_nul(properties[name])


def build(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The document for ``app`` run with ``settings``."""
    from app.uploads.presigned_routes import RegisterRequest

    profiles = load_profiles(settings.profiles_file)
    spec = get_openapi(title=app.title, version=app.version, summary=app.summary,
                       routes=app.routes)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = _problem_schema()
    schemas.update(_metadata_schemas())
    register = RegisterRequest.model_json_schema(ref_template=SCHEMAS + "{model}")
    register["properties"]["metadata"] = {"$ref": SCHEMAS + "ClientMetadata"}
    register.update(_slot_rule(nullable=True))
    schemas["RegisterRequest"] = register
    profile = _profile_schema(profiles)
    for name in ("RegisterRequest", "PresignRequest"):
        schemas[name]["properties"]["profile"] = profile
    token = schemas["UploadTokenRequest"]
    token["properties"]["profile"] = {"anyOf": [profile, {"type": "null"}]}
    token["properties"]["metadata"] = {"anyOf": [{"$ref": SCHEMAS + "ClientMetadata"},
                                                 {"type": "null"}]}
    token.update(_slot_rule(nullable=True))
    for name in ("record_type", "record_id", "record_name"):
        _no_nul(token["properties"][name])

    # Downloads take the API key or the signed token of the attachment's `url`: two
    # alternatives, either one enough (a bad or expired token: 403).
    components.setdefault("securitySchemes", {})[SIGNED_LINK] = {
        "type": "apiKey", "in": "query", "name": "token",
        "description": "The signed token of an attachment's or derivative's `url`: a link"
                       " that works without the API key until it expires (403 when tampered"
                       " or expired).",
    }
    for path in ("/v1/attachments/{attachment_id}/content",
                 "/v1/attachments/{attachment_id}/derivatives/{name}"):
        op = _operation(spec, path, "get")
        op["security"] = [{BEARER: []}, {SIGNED_LINK: []}]
        op["parameters"] = [p for p in op["parameters"] if p["name"] != "token"]

    wait = _parameter(_operation(spec, "/v1/attachments/{attachment_id}", "get"), "wait")
    wait["description"] = wait["schema"]["description"] = (
        "long-poll: answer as soon as the state is no longer `cached`, or after this many"
        " seconds. At most 60; the server waits at most STOWAGE_LONG_POLL_MAX seconds"
        f" ({settings.long_poll_max:g} here) whatever is asked.")

    limits = _limits_doc(settings, profiles)
    raw = _operation(spec, "/v1/attachments/raw", "post")
    _parameter(raw, "profile")["schema"] = profile
    metadata = _parameter(raw, "metadata")
    metadata.pop("schema")
    metadata["content"] = {"application/json": {"schema": {"$ref": SCHEMAS + "ClientMetadata"}}}
    raw["description"] = (raw.get("description", "") + limits).strip()
    multipart = _operation(spec, "/v1/attachments", "post")
    form = multipart["requestBody"]["content"]["multipart/form-data"]["schema"]
    form["properties"]["profile"] = profile
    form.update(_slot_rule(nullable=False))
    multipart["description"] = (multipart.get("description", "") + limits).strip()
    _text_options_without_nul(spec)
    presign = _operation(spec, "/v1/presigned-uploads", "post")
    presign["description"] = (presign.get("description", "") + limits).strip()
    _scopes(app, spec)
    return spec


def _scopes(app: FastAPI, spec: dict[str, Any]) -> None:
    """Each operation's scope (``x-stowage-scope``, from the route's ``requires`` or
    ``declares``), whether an upload token is accepted (``x-stowage-upload-token``), and the
    403 a key without the scope gets."""
    for path, methods, in_schema, declared in route_scopes(app):
        item = spec["paths"].get(path)
        if declared is None or item is None or not in_schema:
            continue
        scope, tokens, counted = declared
        for method in methods:
            op = item.get(method.lower())
            if op is None:
                continue
            op["x-stowage-scope"] = scope
            op["x-stowage-upload-token"] = tokens
            note = f"API key scope: `{scope}`." + (" An upload token is accepted too."
                                                  if tokens else "")
            op["description"] = (op.get("description", "") + "\n\n" + note).strip()
            responses = op.setdefault("responses", {})
            responses.setdefault("default", {"description": "Every answer to an app with a"
                                 " rate limit carries `RateLimit-Limit`, `RateLimit-Remaining`"
                                 " and `RateLimit-Reset`", "headers": _rate_headers()})
            if counted:
                responses["429"] = {
                    "description": "Over the app's rate limit (uploads per minute):"
                    " rate-limited; see `Retry-After`", **_problem_content(),
                    "headers": {**_rate_headers(), "Retry-After": {
                        "schema": {"type": "integer"}, "description": "seconds"}}}
            forbidden = responses.get("403")
            text = f"The API key lacks the scope `{scope}` (insufficient-scope)"
            if scope == "upload" and method in ("POST", "PATCH"):
                text += ("; or the upload would take the app over its storage quota"
                         " (quota-exceeded)")
            if forbidden is None:
                op["responses"]["403"] = {"description": text, **_problem_content()}
            elif "insufficient-scope" not in forbidden["description"]:
                forbidden["description"] += f"; or: {text}"


def route_scopes(app: FastAPI) -> list[tuple[str, set[str], bool, tuple[str, bool] | None]]:
    """Every /v1 route (hidden ones too): (path, methods, in the document, the scope it
    declares and whether it takes an upload token, or None)."""
    from app.deps import scope_of_route

    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path_format or ""
        if isinstance(route, APIRoute) and path.startswith("/v1"):
            found.append((path, set(context.methods or ()), route.include_in_schema,
                          scope_of_route(route.dependant)))
    return found


def _rate_headers() -> dict[str, Any]:
    return {name: {"schema": {"type": "integer"}, "description": doc} for name, doc in (
        ("RateLimit-Limit", "uploads the app may start per window"),
        ("RateLimit-Remaining", "of them left now"),
        ("RateLimit-Reset", "seconds until the window has room again"))}


def _problem_content() -> dict[str, Any]:
    return {"content": {"application/problem+json": {
        "schema": {"$ref": SCHEMAS + "Problem"}}}}


def install(app: FastAPI, settings: Settings) -> None:
    """Serve ``build``'s document at /openapi.json (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = build(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
