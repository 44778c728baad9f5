"""HTTP adapter of image transforms on request (issue 21, API.md "Image transforms on
request"): GET /v1/attachments/{id}/image and POST /v1/attachments/{id}/image-urls."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from app.api_common import PROBLEM, not_found_response
from app.attachments.routes import (
    IMMUTABLE,
    AttachmentsDep,
    attachment_id_of,
    readable,
    serve_object,
)
from app.attachments.variants import Variants
from app.deps import bearer, declares, provided, requires
from app.errors import InvalidInput
from app.media import transform

router = APIRouter(prefix="/v1", tags=["attachments"])

VariantsDep = Annotated[Variants, Depends(provided("variants"))]
# content addressed (attachment, generation, parameters): never changes under its URL; a
# shared cache may keep what a link or a public profile served, not what an API key did
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"

ERRORS: dict[int | str, dict[str, Any]] = {
    **not_found_response("attachment"),
    403: {"description": "A tampered or expired link", **PROBLEM},
    409: {"description": "The attachment is not stored", **PROBLEM},
    422: {"description": "Not an image, no [transforms] in its profile, or out of its"
          " limits", **PROBLEM},
    503: {"description": "Too many renders at once; retry after Retry-After", **PROBLEM},
}


# What the document can state of the parameters; the rest (w or h, both for cover, the
# profile's max_width, max_height and formats) is the attachment's and answered 422.
Dimension = Annotated[int, Field(ge=1, le=transform.MAX_DIMENSION)]
Quality = Annotated[int, Field(ge=1, le=100)]


class VariantIn(BaseModel):
    # strict, as every JSON body: 100 not "100", true not "yes" or 1
    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"anyOf": [{"required": ["w"]},
                                                           {"required": ["h"]}]})

    w: Dimension | None = Field(None, description="width in pixels")
    h: Dimension | None = Field(None, description="height in pixels")
    fit: transform.Fit | None = Field(None, description="contain (default) or cover")
    format: transform.Format | None = Field(None, description="webp, jpeg, png or avif")
    q: Quality | None = Field(None, description="quality 1-100 (lossy formats)")
    enlarge: bool | None = Field(None, description="true: may be larger than the original")


class ImageUrlsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    variants: list[VariantIn] = Field(min_length=1, max_length=50)


class ImageUrlsOut(BaseModel):
    urls: list[str]


def _values(**values: Any) -> dict[str, str | None]:
    """As a query string has them: strings, booleans spelt true/false, None for absent."""
    return {k: None if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in values.items()}


@router.get(
    "/attachments/{attachment_id}/image",
    responses={**ERRORS, 200: {"content": {"image/webp": {}, "image/jpeg": {}, "image/png": {},
                                           "image/avif": {}}}},
    response_class=Response,
    dependencies=[Depends(declares("read"))],
    summary="The stored image at another size or format, rendered once and kept",
)
async def get_image(
    request: Request,
    attachments: AttachmentsDep,
    variants: VariantsDep,
    attachment_id: str,
    w: Dimension | None = Query(None, description="width in pixels (w or h is required)"),
    h: Dimension | None = Query(None, description="height in pixels"),
    fit: transform.Fit | None = Query(None, description="contain (default) or cover"),
    format: transform.Format | None = Query(None, description="webp (default), jpeg, png or avif"),
    q: Quality | None = Query(None, description="quality 1-100, for lossy formats"),
    enlarge: bool | None = Query(None, description="true: may be larger than the original"
                                 " (never, by default)"),
    token: str | None = Query(None, description="the signed token of an image-urls link"),
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Response:
    values = _values(w=w, h=h, fit=fit, format=format, q=q, enlarge=enlarge)
    # a link signs the canonical form, which always names the format: checked against the
    # canonical form of what came, before the profile (and its default format) is known
    signed = _parsed(values)
    row, cache = await readable(request, attachments, attachment_id_of(attachment_id), token,
                                 credentials, derivative=f"image:{signed.key_part()}")
    spec = variants.spec_for(row, values)
    made = await variants.variant(row, spec)
    return await serve_object(
        request, variants.store, key=made["key"], mime=made["mime_type"], size=made["size"],
        # the key names the attachment, its generation and the parameters: one tag each
        etag=hashlib.sha256(made["key"].encode()).hexdigest()[:32], filename=None,
        modified=made["created_at"],
        cache_control=PRIVATE_IMMUTABLE if cache.startswith("private") else IMMUTABLE)


@router.post(
    "/attachments/{attachment_id}/image-urls",
    response_model=ImageUrlsOut,
    responses=ERRORS,
    summary="Signed links to variants of a stored image, usable without the API key",
)
async def image_urls(
    attachments: AttachmentsDep,
    variants: VariantsDep,
    attachment_id: str,
    body: ImageUrlsIn,
    app_id: Any = Depends(requires("read")),
) -> dict[str, Any]:
    row = await attachments.get(app_id, attachment_id_of(attachment_id))
    specs = [variants.spec_for(row, _values(**v.model_dump())) for v in body.variants]
    return {"urls": variants.urls(row, specs)}


def _parsed(values: dict[str, str | None]) -> transform.TransformSpec:
    try:
        # its syntax and canonical form, before the link's signature is checked (it signs
        # the canonical form); the profile's limits once the attachment is known (check)
        return transform.TransformSpec.parse(values, transform.TransformLimits())
    except transform.TransformError as e:
        raise InvalidInput(str(e), field=e.field) from None
