"""HTTP adapter for webhook endpoints and their delivery log."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from app.api_common import (
    PROBLEM,
    cursor_query,
    decode_cursor,
    encode_cursor,
    not_found_response,
    path_id,
)
from app.deps import provided, requires
from app.errors import NotFound, WebhookEndpointNotFound
from app.idempotency.http import IdempotencyDep, IdempotencyKey, idempotent
from app.idempotency.http import responses as with_idempotency
from app.idempotency.service import fingerprint
from app.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    EndpointCreate,
    EndpointList,
    EndpointOut,
    EndpointPatch,
    present_delivery,
    present_endpoint,
)
from app.webhooks.service import Webhooks

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])

WebhooksDep = Annotated[Webhooks, Depends(provided("webhooks"))]
ERRORS = not_found_response("webhook endpoint")


def _endpoint_id(value: str) -> UUID:
    return path_id(value, WebhookEndpointNotFound)


@router.post("", status_code=201, response_model=EndpointOut,
             responses=with_idempotency(ERRORS),
             summary="Subscribe a URL to events; the answer holds its signing secret")
async def create_endpoint(webhooks: WebhooksDep, idem: IdempotencyDep, body: EndpointCreate,
                          idempotency_key: IdempotencyKey = None,
                          app_id: UUID = Depends(requires("webhooks"))) -> Response:
    made = fingerprint("webhook-endpoint", body.model_dump(mode="json"))

    async def run() -> tuple[Response, str]:
        row = await webhooks.create_endpoint(app_id, body.url, body.events, body.description)
        return JSONResponse(present_endpoint(row), status_code=201,
                            headers={"Location": f"/v1/webhook-endpoints/{row['id']}"}), made

    return await idempotent(idem, app_id, idempotency_key, "POST /v1/webhook-endpoints", made,
                            run)


@router.get("", response_model=EndpointList, responses=ERRORS, summary="List endpoints")
async def list_endpoints(webhooks: WebhooksDep, cursor: str | None = cursor_query(),
                         limit: int = Query(50, ge=1, le=200),
                         app_id: UUID = Depends(requires("webhooks"))) -> dict[str, Any]:
    page = await webhooks.list_endpoints(app_id, decode_cursor(cursor), limit)
    return {"items": [present_endpoint(r) for r in page.items],
            "next_cursor": encode_cursor(page.next_before)}


@router.get("/{endpoint_id}", response_model=EndpointOut, responses=ERRORS,
            summary="Get an endpoint")
async def get_endpoint(webhooks: WebhooksDep, endpoint_id: str,
                       app_id: UUID = Depends(requires("webhooks"))) -> dict[str, Any]:
    return present_endpoint(await webhooks.get_endpoint(app_id, _endpoint_id(endpoint_id)))


@router.patch("/{endpoint_id}", response_model=EndpointOut, responses=ERRORS,
              summary="Change url, events, description, enabled; rotate the secret")
async def patch_endpoint(webhooks: WebhooksDep, endpoint_id: str, body: EndpointPatch,
                         app_id: UUID = Depends(requires("webhooks"))) -> dict[str, Any]:
    patch = body.model_dump(exclude_unset=True)
    for key in ("url", "enabled"):  # explicit nulls mean nothing for these
        if key in patch and patch[key] is None:
            del patch[key]
    row = await webhooks.update_endpoint(app_id, _endpoint_id(endpoint_id), patch)
    return present_endpoint(row)


@router.delete("/{endpoint_id}", status_code=204, responses=ERRORS, summary="Delete an endpoint")
async def delete_endpoint(webhooks: WebhooksDep, endpoint_id: str,
                          app_id: UUID = Depends(requires("webhooks"))) -> Response:
    await webhooks.delete_endpoint(app_id, _endpoint_id(endpoint_id))
    return Response(status_code=204)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveryList, responses=ERRORS,
            summary="The delivery log, newest first")
async def list_deliveries(webhooks: WebhooksDep, endpoint_id: str,
                          status: Literal["pending", "delivered", "failed"] | None = None,
                          cursor: str | None = cursor_query(),
                          limit: int = Query(50, ge=1, le=200),
                          app_id: UUID = Depends(requires("webhooks"))) -> dict[str, Any]:
    page = await webhooks.list_deliveries(app_id, _endpoint_id(endpoint_id), status,
                                         decode_cursor(cursor), limit)
    return {"items": [present_delivery(r) for r in page.items],
            "next_cursor": encode_cursor(page.next_before)}


@router.post("/{endpoint_id}/deliveries/{delivery_id}/retry", status_code=202,
             response_model=DeliveryOut, responses=ERRORS, summary="Deliver again now")
async def retry_delivery(webhooks: WebhooksDep, endpoint_id: str, delivery_id: str,
                         app_id: UUID = Depends(requires("webhooks"))) -> JSONResponse:
    row = await webhooks.retry_delivery(app_id, _endpoint_id(endpoint_id),
                                       path_id(delivery_id, NotFound))
    return JSONResponse(present_delivery(row), status_code=202)


@router.post("/{endpoint_id}/test", status_code=202, response_model=DeliveryOut,
             responses={**ERRORS, 409: {"description": "The endpoint is disabled", **PROBLEM}},
             summary="Send a webhook.test event to this endpoint")
async def test_endpoint(webhooks: WebhooksDep, endpoint_id: str,
                        app_id: UUID = Depends(requires("webhooks"))) -> JSONResponse:
    row = await webhooks.send_test(app_id, _endpoint_id(endpoint_id))
    return JSONResponse(present_delivery(row), status_code=202)
