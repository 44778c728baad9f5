"""What promotion makes of a file that has a picture: its derivatives (images, the first page
of a PDF, a video's poster), the facts about it (PDF pages, durations, codecs, sizes) and a
ThumbHash placeholder. Pure and synchronous like app.media.derivatives: run in the pool.

A profile with derivatives promises them for every file it accepts, so a file that cannot be
previewed fails (``error.code``: corrupt_pdf, encrypted_pdf, empty_pdf, too_many_pages,
corrupt_video, no_video_stream, too_long, too_many_pixels, preview_timeout, or the image
codes). A profile without derivatives stores every file: the facts and the placeholder are
extras, left out when the file does not give them. Audio files never fail for their facts:
they have no picture to promise.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from app.media import pdf, thumbhash, video
from app.media.derivatives import (
    PLACEHOLDER_SPEC,
    DerivativeSpec,
    ImageProcessingError,
    Rendered,
    build_image,
    render_decoded,
)
from app.media.errors import MediaLimits, PreviewError

__all__ = ["MediaLimits", "Preview", "PreviewError", "build_preview", "kind_of"]


@dataclass(frozen=True)
class Preview:
    derivatives: dict[str, Rendered] = field(default_factory=dict)
    # merged into the attachment's metadata: pages, duration, width, height, video_codec,
    # audio_codec, thumbhash, dominant_color (whichever apply)
    metadata: dict[str, Any] = field(default_factory=dict)


def kind_of(mime_type: str) -> str:
    """"image", "pdf", "video", "audio" or "other", from the sniffed type."""
    if mime_type.startswith("image/"):
        return "image"
    if mime_type == "application/pdf":
        return "pdf"
    if mime_type.startswith("video/"):
        return "video"
    if mime_type.startswith("audio/") or mime_type == "application/ogg":
        return "audio"
    return "other"


def build_preview(path: str | Path, mime_type: str, specs: Mapping[str, DerivativeSpec], *,
                  max_pixels: int | None, limits: MediaLimits | None = None) -> Preview:
    """Derivatives and metadata of the file at ``path``. Raises ImageProcessingError (or its
    PreviewError) only when ``specs`` is not empty and the file cannot give them."""
    limits = limits or MediaLimits()
    kind = kind_of(mime_type)
    if kind == "audio":
        return _audio(path, limits)
    if kind == "other" and not specs:
        return Preview()
    pixel_limit = max_pixels if max_pixels is not None else (Image.MAX_IMAGE_PIXELS or 0)
    try:
        if kind == "pdf":
            picture, meta = pdf.first_page(path, [*specs.values(), PLACEHOLDER_SPEC], limits)
        elif kind == "video":
            picture, meta = video.poster(path, specs.values(), placeholder=True,
                                         max_pixels=pixel_limit, limits=limits,
                                         deadline=time.monotonic() + limits.timeout)
        else:
            rendered, small = build_image(path, specs, max_pixels=max_pixels, placeholder=True)
            return Preview(rendered, placeholder_facts(small))
        assert picture is not None  # a placeholder is always asked for
        rendered, small = render_decoded(picture, specs, placeholder=True)
    except PreviewError as e:
        if specs:
            raise
        if kind == "video" and e.code == PreviewError.NO_VIDEO_STREAM:
            return _audio(path, limits)  # sound in a video container
        return Preview()
    except ImageProcessingError:
        if specs:
            raise
        return Preview()
    return Preview(rendered, {**meta, **placeholder_facts(small)})


def _audio(path: str | Path, limits: MediaLimits) -> Preview:
    try:
        return Preview({}, video.audio_facts(path, limits))
    except PreviewError:
        return Preview()


def placeholder_facts(small: Image.Image | None) -> dict[str, Any]:
    """``thumbhash`` (base64) and ``dominant_color`` ("#rrggbb") of a picture at most 100
    pixels a side."""
    if small is None:
        return {}
    rgba = small.convert("RGBA")
    facts: dict[str, Any] = {
        "thumbhash": thumbhash.to_base64(thumbhash.encode(rgba.width, rgba.height,
                                                          rgba.tobytes())),
    }
    colour = dominant_color(rgba)
    if colour is not None:
        facts["dominant_color"] = colour
    return facts


def dominant_color(rgba: Image.Image) -> str | None:
    """The most common of the picture's 8 median-cut colours, over its visible pixels."""
    quantized = rgba.convert("RGB").quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    palette = quantized.getpalette() or []
    counts: dict[int, int] = {}
    alpha = rgba.getchannel("A").tobytes()
    for index, a in zip(quantized.tobytes(), alpha, strict=True):
        if a >= 128:
            counts[index] = counts.get(index, 0) + 1
    if not counts:
        return None
    best = max(counts, key=lambda i: counts[i])
    r, g, b = palette[best * 3:best * 3 + 3]
    return f"#{r:02x}{g:02x}{b:02x}"
