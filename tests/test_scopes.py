"""Scoped API keys (issue 24): every /v1 route requires a scope, and a key outside it gets 403
insufficient-scope naming the scope; keys made without --scopes have all four."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import service as auth
from app.auth.scopes import SCOPES, parse_scopes
from app.errors import InvalidInput
from app.main import create_app
from app.openapi import route_scopes
from tests.conftest import AppKey, env_for
from tests.factories import upload

TUS = {"Tus-Resumable": "1.0.0"}
STOWAGE = str(Path(sys.executable).with_name("stowage"))


async def key_with(res: Any, tenant: AppKey, scopes: tuple[str, ...]) -> AppKey:
    new = await auth.create_key(res.pool, tenant.app_id, scopes)
    return AppKey(tenant.app_id, new.api_key)


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in spec["paths"].items()
            if path.startswith("/v1") for method, op in item.items()
            if method in ("get", "post", "put", "patch", "delete", "head")]


async def test_every_operation_of_the_document_names_its_scope(client: httpx.AsyncClient
                                                               ) -> None:
    spec = (await client.get("/openapi.json")).json()
    operations = _operations(spec)
    assert len(operations) > 20
    for path, method, op in operations:
        assert op.get("x-stowage-scope") in SCOPES, f"{method.upper()} {path} has no scope"
        assert "insufficient-scope" in op["responses"]["403"]["description"], (method, path)


def test_every_v1_route_declares_a_scope(settings: Any) -> None:
    """Hidden routes too (tus's method override, the trailing-slash twins): a route added
    without ``requires``/``declares`` fails here."""
    routes = route_scopes(create_app(settings))
    assert len(routes) > 20
    missing = [f"{sorted(methods)} {path}" for path, methods, _, scope in routes
               if methods != {"OPTIONS"} and scope is None]
    assert missing == []


def _request_args(path: str, method: str, op: dict[str, Any]) -> dict[str, Any]:
    url = path
    for name in ("attachment_id", "upload_id", "endpoint_id", "delivery_id"):
        url = url.replace("{" + name + "}", str(uuid.uuid4()))
    url = url.replace("{name}", "thumb")
    args: dict[str, Any] = {"method": method.upper(), "url": url, "headers": dict(TUS)}
    if path.endswith("/image"):
        args["params"] = {"w": 10}  # checked before the key: it is part of a signed link
    body = op.get("requestBody", {}).get("content", {})
    if "application/json" in body and "multipart/form-data" not in body:
        args["json"] = {}
    return args


async def test_each_route_refuses_a_key_without_its_scope(client: httpx.AsyncClient,
                                                          res: Any, tenant: AppKey) -> None:
    """Each operation, with a key that has every scope but the one it requires: 403 naming
    that scope. With a key that has only that scope: anything but insufficient-scope."""
    spec = (await client.get("/openapi.json")).json()
    without = {s: await key_with(res, tenant, tuple(x for x in SCOPES if x != s))
               for s in SCOPES}
    only = {s: await key_with(res, tenant, (s,)) for s in SCOPES}
    for path, method, op in _operations(spec):
        scope = op["x-stowage-scope"]
        args = _request_args(path, method, op)
        r = await client.request(**{**args, "headers": {**args["headers"],
                                                        **without[scope].headers}})
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        if method != "head":
            problem = r.json()
            assert problem["type"].endswith("insufficient-scope"), (method, path, problem)
            assert problem["scope"] == scope and repr(scope) in problem["detail"]
        r = await client.request(**{**args, "headers": {**args["headers"],
                                                        **only[scope].headers}})
        assert r.status_code != 403 or "insufficient-scope" not in r.text, (method, path)


async def test_a_front_end_key_uploads_but_cannot_read_list_or_delete(
        client: httpx.AsyncClient, res: Any, tenant: AppKey) -> None:
    front = await key_with(res, tenant, ("upload",))
    att = await upload(client, front, b"from the browser")
    for method, url in (("GET", f"/v1/attachments/{att['id']}"), ("GET", "/v1/attachments"),
                        ("DELETE", f"/v1/attachments/{att['id']}"),
                        ("GET", f"/v1/attachments/{att['id']}/content"),
                        ("GET", "/v1/webhook-endpoints")):
        r = await client.request(method, url, headers=front.headers)
        assert r.status_code == 403, (method, url, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    # the signed link of the answer still works without any key
    r = await client.get(att["url"].replace("http://127.0.0.1:8000", ""))
    assert r.status_code == 200 and r.content == b"from the browser"
    # the full key reads it
    r = await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.status_code == 200


async def test_scopes_are_kept_and_revocation_stays_immediate(client: httpx.AsyncClient,
                                                              res: Any, tenant: AppKey) -> None:
    reader = await auth.create_key(res.pool, tenant.app_id, ("read",))
    keys = await auth.list_keys(res.pool, tenant.app_id)
    assert {tuple(k["scopes"]) for k in keys} == {SCOPES, ("read",)}
    headers = {"Authorization": f"Bearer {reader.api_key}"}
    assert (await client.get("/v1/attachments", headers=headers)).status_code == 200
    await auth.revoke_key(res.pool, reader.key_id)
    assert (await client.get("/v1/attachments", headers=headers)).status_code == 401


def test_parse_scopes() -> None:
    assert parse_scopes(None) == SCOPES
    assert parse_scopes(" Read, upload ,read") == ("upload", "read")
    for bad in ("", ",", "admin", "read,write"):
        with pytest.raises(InvalidInput):
            parse_scopes(bad)


def _cli(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STOWAGE, *args], env=env_for(settings),
                          capture_output=True, text=True, timeout=60)


async def test_cli_keys_create_with_scopes_and_list(res: Any, tenant: AppKey) -> None:
    out = _cli(res.settings, "keys", "create", str(tenant.app_id), "--scopes", "upload",
               "--json")
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["scopes"] == ["upload"]
    listed = _cli(res.settings, "keys", "list", str(tenant.app_id))
    line = next(x for x in listed.stdout.splitlines() if x.startswith(made["key_id"]))
    assert "scopes=upload " in line + " "
    assert any("scopes=upload,read,delete,webhooks" in x for x in listed.stdout.splitlines())
    bad = _cli(res.settings, "keys", "create", str(tenant.app_id), "--scopes", "upload,admin")
    assert bad.returncode == 2 and "unknown scope" in bad.stderr and "'admin'" in bad.stderr
