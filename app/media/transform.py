"""Image transforms on request (issue 21): a normalised spec and its libvips render.

Pure and synchronous, like ``derivatives.py``: nothing here touches FastAPI, arq, the database
or storage. The API parses the query (or a JSON variant) into a :class:`TransformSpec` against
the profile's limits, derives the variant's key from :meth:`TransformSpec.key_part`, and runs
:func:`render` in a bounded thread pool (libvips releases the GIL for the whole render).

Parameters (see :meth:`TransformSpec.parse`):

* ``w``, ``h``: the box, in pixels, 1..``max_width`` / 1..``max_height``. At least one is
  required; ``contain`` with one of them leaves the other side free (aspect ratio kept);
  ``cover`` needs both.
* ``fit``: ``contain`` (default; the largest size inside the box, aspect ratio kept) or
  ``cover`` (fills the box exactly, centre-cropped).
* ``format``: ``webp``, ``jpeg``, ``png``, ``avif``; must be in the profile's ``formats``.
  Default: ``webp`` when the profile allows it, else the first allowed of jpeg, avif, png
  (never "the original's": a variant's key and type never depend on what was uploaded).
* ``q``: 1..100 for the lossy formats; defaults :data:`DEFAULT_QUALITY` (webp and jpeg 80,
  avif 60: libvips' AVIF scale runs lower for the same look). PNG is lossless: a ``q`` sent
  with it is validated, then dropped, so it cannot split one variant into a hundred keys.
* ``enlarge``: ``true``/``false`` (also ``1``/``0``, ``yes``/``no``), default false. The
  **enlarge rule**: without it, nothing is ever made larger than the original. ``contain`` then
  stops at the original's size; ``cover`` keeps the box's aspect ratio and crops the largest
  such rectangle the original holds (a 300x200 original asked for cover 512x512 gives
  200x200). With ``enlarge=true`` both upscale to the box.

Rendering (:func:`render`): the header is read first (nothing decoded) and refused when the
format is not one we decode (:data:`LOADERS`) or it has more than ``max_pixels``; then libvips'
``thumbnail`` does shrink-on-load (JPEG at 1/2..1/8 in libjpeg, WebP scaled in libwebp, the
smallest pyramid level of a HEIF/TIFF), applies the EXIF orientation, imports CMYK and tagged
images to sRGB, decodes the first frame only of an animation, and resizes with Lanczos. JPEG
output is flattened on white; every output is sRGB and carries no metadata at all (no EXIF,
XMP, IPTC, ICC). Failures are :class:`~app.media.derivatives.ImageProcessingError` with the
codes derivatives use (``not_an_image``, ``corrupt_image``, ``too_many_pixels``,
``unsupported_image``), so the API answers them the same way (422).

Process-wide libvips settings made at import, for a server that does a few operations on many
different images: the operation cache is off (it would keep decoded images and open files of
requests long gone: memory that only grows), and each render runs on one libvips thread — the
caller's pool is the parallelism, as imgproxy does (``vips_concurrency_set(1)``). Loaders
libvips marks untrusted (ImageMagick, matload, FITS, ...) are blocked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pyvips

from app.media import derivatives
from app.media.derivatives import ImageProcessingError, Rendered

Fit = Literal["contain", "cover"]
Format = Literal["webp", "jpeg", "png", "avif"]
Source = str | Path | bytes | bytearray | memoryview

FITS: tuple[Fit, ...] = ("contain", "cover")
FORMATS: tuple[Format, ...] = ("webp", "jpeg", "png", "avif")
# the default format when webp is not allowed: the first of these the profile allows
_DEFAULT_ORDER: tuple[Format, ...] = ("webp", "jpeg", "avif", "png")
LOSSY: frozenset[str] = frozenset({"webp", "jpeg", "avif"})
DEFAULT_QUALITY: Mapping[str, int] = {"webp": 80, "jpeg": 80, "avif": 60}
# the derivatives' formats, and AVIF, which libvips writes (Pillow here does not)
MIME_TYPES: Mapping[str, str] = {**derivatives.MIME_TYPES, "avif": "image/avif"}
EXTENSIONS: Mapping[str, str] = {**derivatives.EXTENSIONS, "avif": ".avif"}
# The query parameters a transform reads; anything else in a query is the caller's business.
PARAMETERS: tuple[str, ...] = ("w", "h", "fit", "format", "q", "enlarge")
# Absolute ceiling whatever a profile says: an output buffer is allocated at this size.
MAX_DIMENSION = 8192
# max_pixels=None never means "no limit": Pillow's default, as derivatives fall back to.
DEFAULT_MAX_PIXELS = 89_478_485

# Loaders (the libvips operation that reads the header) decoded at all, by their base name;
# the file/buffer/source suffix is stripped. Same family as derivatives' SUPPORTED_FORMATS.
LOADERS: frozenset[str] = frozenset({"jpegload", "pngload", "gifload", "webpload", "tiffload",
                                     "heifload"})
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00",
               b"MM\x00*")
# images of kinds we do not decode here (libvips reads them only through ImageMagick, which is
# not in the bundled build and is blocked): unsupported_image, not "not an image"
_OTHER_IMAGES = {b"BM": "BMP", b"8BPS": "PSD", b"\x00\x00\x01\x00": "ICO"}
_ISOBMFF_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

pyvips.cache_set_max(0)
pyvips.cache_set_max_mem(0)
pyvips.cache_set_max_files(0)
pyvips.concurrency_set(int(os.environ.get("VIPS_CONCURRENCY", "1")))
pyvips.block_untrusted_set(True)


class TransformError(ValueError):
    """A parameter is wrong: ``field`` names it (``w``, ``h``, ``fit``, ``format``, ``q``,
    ``enlarge``), ``detail`` says why. The API answers 422."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(field, detail)
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


class Limits(Protocol):
    """What a profile's ``[transforms]`` table gives; any object with these attributes."""

    @property
    def max_width(self) -> int: ...
    @property
    def max_height(self) -> int: ...
    @property
    def formats(self) -> Collection[str]: ...


@dataclass(frozen=True)
class TransformLimits:
    """A plain :class:`Limits` (tests, the benchmark, or a profile model that wants one)."""

    max_width: int = MAX_DIMENSION
    max_height: int = MAX_DIMENSION
    formats: Collection[str] = field(default=FORMATS)


@dataclass(frozen=True)
class TransformSpec:
    """One normalised variant: defaults filled, q dropped for PNG. Build it with
    :meth:`parse`; two requests for the same variant give equal specs and one ``key_part``."""

    w: int | None
    h: int | None
    fit: Fit = "contain"
    format: Format = "webp"
    q: int | None = DEFAULT_QUALITY["webp"]
    enlarge: bool = False

    @classmethod
    def parse(cls, params: Mapping[str, Any], limits: Limits) -> TransformSpec:
        """From query values (strings) or JSON values (ints, bools, None); keys other than
        :data:`PARAMETERS` are ignored, a value of None or "" is "not given". Raises
        :class:`TransformError` naming the first field at fault."""
        w = _dimension(params, "w", min(limits.max_width, MAX_DIMENSION))
        h = _dimension(params, "h", min(limits.max_height, MAX_DIMENSION))
        fit = _choice(params, "fit", FITS) or "contain"
        allowed = [f for f in FORMATS if f in set(limits.formats)]
        fmt = _choice(params, "format", FORMATS)
        if fmt is not None and fmt not in allowed:
            raise TransformError("format", f"{fmt} is not allowed here (allowed: "
                                           f"{', '.join(allowed) or 'none'})")
        if fmt is None:
            fmt = next((f for f in _DEFAULT_ORDER if f in allowed), None)
            if fmt is None:
                raise TransformError("format", "the profile allows no output format")
        q = _integer(params, "q", 1, 100)
        enlarge = _boolean(params, "enlarge")
        if w is None and h is None:
            raise TransformError("w", "w or h is required")
        if fit == "cover" and (w is None or h is None):
            raise TransformError("h" if w else "w", "fit=cover needs both w and h")
        if fmt in LOSSY:
            q = q if q is not None else DEFAULT_QUALITY[fmt]
        else:
            q = None  # lossless: validated above, then dropped (one variant, one key)
        return cls(w=w, h=h, fit=fit, format=fmt, q=q, enlarge=enlarge)  # type: ignore[arg-type]

    def key_part(self) -> str:
        """Canonical and storage-safe, e.g. ``w512-h384-cover-q80-up.webp``; the same for every
        order and spelling of the same parameters."""
        parts = [f"w{self.w}" if self.w else "w_", f"h{self.h}" if self.h else "h_", self.fit]
        if self.q is not None:
            parts.append(f"q{self.q}")
        if self.enlarge:
            parts.append("up")
        return "-".join(parts) + EXTENSIONS[self.format]

    def query(self) -> dict[str, str]:
        """The canonical parameters as query values (for signed links): parsing them again
        gives this spec back."""
        out = {"fit": self.fit, "format": self.format}
        if self.w:
            out["w"] = str(self.w)
        if self.h:
            out["h"] = str(self.h)
        if self.q is not None:
            out["q"] = str(self.q)
        if self.enlarge:
            out["enlarge"] = "true"
        return dict(sorted(out.items()))

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.format]


def _given(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _integer(params: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = _given(params, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TransformError(name, f"must be an integer, not {value!r}")
    if isinstance(value, str):
        if not value.isascii() or not value.lstrip("-").isdigit() or len(value) > 9:
            raise TransformError(name, f"must be an integer, not {value!r}")
        value = int(value)
    if value < low:
        raise TransformError(name, f"must be at least {low}, not {value}")
    if value > high:
        raise TransformError(name, f"must be at most {high}, not {value}")
    return value


def _dimension(params: Mapping[str, Any], name: str, limit: int) -> int | None:
    return _integer(params, name, 1, limit)


def _choice(params: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = _given(params, name)
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in choices:
        raise TransformError(name, f"must be one of {', '.join(choices)}, not {value!r}")
    return value.lower()


def _boolean(params: Mapping[str, Any], name: str) -> bool:
    value = _given(params, name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise TransformError(name, f"must be true or false, not {value!r}")


# -- rendering ---------------------------------------------------------------------------------


def render(source: Source, spec: TransformSpec, *, max_pixels: int | None,
           box: Limits | None = None) -> Rendered:
    """The variant ``spec`` of an image file (path) or image bytes. Synchronous and thread
    safe (no shared state but libvips' own, which is). A missing file raises OSError.

    ``box``: the profile's limits; the output never exceeds its ``max_width`` x
    ``max_height`` (default :data:`MAX_DIMENSION` each), also on the side ``spec`` leaves
    free: ``w=10&enlarge=true`` on a 1x1000 image is 10x8192 at most, not 10x10000."""
    limit = max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        head = data[:16]
        if not _looks_like_image(head):
            raise _not_an_image(head)
        header = _header(lambda: pyvips.Image.new_from_buffer(data, "", access="sequential"),
                         head)
    else:
        path = os.fspath(source)
        with open(path, "rb") as f:  # a missing or unreadable file: its own OSError
            head = f.read(16)
        data = None
        if not _looks_like_image(head):
            raise _not_an_image(head)
        # a path is read through a Source: libvips would take "name[...]" as options
        header = _header(lambda: pyvips.Image.new_from_source(
            pyvips.Source.new_from_file(path), "", access="sequential"), head)
    width, height = header.width, header.height
    if width * height > limit:
        raise ImageProcessingError(
            ImageProcessingError.TOO_MANY_PIXELS,
            f"image is {width}x{height} ({width * height} pixels); the limit is {limit}",
        )
    shown = (height, width) if _orientation(header) in (5, 6, 7, 8) else (width, height)
    limits = box or TransformLimits()
    target = _target(spec, *shown, free=(min(limits.max_width, MAX_DIMENSION),
                                         min(limits.max_height, MAX_DIMENSION)))
    # fail_on as a kwarg does not reach thumbnail's loader (libvips 8.18); the option string
    # does. "truncated": a cut-off file is corrupt (not half grey), libjpeg's warnings about
    # cameras' quirks are not (as with Pillow).
    options: dict[str, Any] = {"height": target.box[1], "size": target.size,
                               "option_string": "fail_on=truncated"}
    if target.crop:
        options["crop"] = "centre"
    if _has_profile(header):
        options["output_profile"] = "srgb"  # tagged RGB (Adobe RGB, P3): converted, not kept
    try:
        if data is not None:
            im = pyvips.Image.thumbnail_buffer(data, target.box[0], **options)
        else:
            im = pyvips.Image.thumbnail_source(pyvips.Source.new_from_file(path),
                                               target.box[0], **options)
        im = _saveable(im, spec.format)
        out = _save(im, spec)
    except pyvips.Error as e:
        raise ImageProcessingError(ImageProcessingError.CORRUPT_IMAGE,
                                   f"the image data cannot be decoded: {_message(e)}") from None
    return Rendered(data=out, mime_type=spec.mime_type, width=im.width, height=im.height,
                    ext=spec.ext)


@dataclass(frozen=True)
class _Target:
    box: tuple[int, int]  # what thumbnail is asked for
    size: str  # thumbnail's "size": down (never enlarge) or both
    crop: bool


def _target(spec: TransformSpec, width: int, height: int, *, free: tuple[int, int]
            ) -> _Target:
    """thumbnail's arguments for a source shown as ``width`` x ``height``; a side ``spec``
    leaves free is bounded by ``free`` (the profile's maximum), never unbounded."""
    if spec.fit == "contain":
        return _Target((spec.w or free[0], spec.h or free[1]),
                       "both" if spec.enlarge else "down", False)
    assert spec.w and spec.h
    w, h = spec.w, spec.h
    if not spec.enlarge and (w > width or h > height):
        # the box's aspect ratio, as large as the original holds: never upscaled
        scale = min(width / w, height / h)
        w, h = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    return _Target((w, h), "both", True)


def _header(opener: Any, head: bytes) -> pyvips.Image:
    try:
        image = opener()
    except pyvips.Error as e:
        if _looks_like_image(head):
            raise ImageProcessingError(ImageProcessingError.CORRUPT_IMAGE,
                                       f"the image header cannot be read: {_message(e)}") from None
        raise _not_an_image(head) from None
    loader = _loader(image)
    if loader not in LOADERS:
        raise ImageProcessingError(
            ImageProcessingError.UNSUPPORTED_IMAGE,
            f"image format {loader.removesuffix('load') or 'unknown'} is not supported")
    return image


def _loader(image: pyvips.Image) -> str:
    try:
        name = str(image.get("vips-loader"))
    except pyvips.Error:
        return ""
    for suffix in ("_source", "_buffer"):
        name = name.removesuffix(suffix)
    return name


def _orientation(image: pyvips.Image) -> int:
    try:
        value = int(image.get("orientation"))
    except (pyvips.Error, ValueError, TypeError):
        return 1
    return value if 1 <= value <= 8 else 1


def _has_profile(image: pyvips.Image) -> bool:
    return image.get_typeof("icc-profile-data") != 0


def _looks_like_image(head: bytes) -> bool:
    return (
        head.startswith(_SIGNATURES)
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or (head[4:8] == b"ftyp" and head[8:12] in _ISOBMFF_BRANDS)
    )


def _not_an_image(head: bytes) -> ImageProcessingError:
    kind = next((k for sig, k in _OTHER_IMAGES.items() if head.startswith(sig)), None)
    if kind is not None:
        return ImageProcessingError(ImageProcessingError.UNSUPPORTED_IMAGE,
                                    f"image format {kind} is not supported")
    return ImageProcessingError(ImageProcessingError.NOT_AN_IMAGE,
                                "the file is not an image that can be read")


def _message(e: pyvips.Error) -> str:
    text = (e.detail or e.message or "").strip().splitlines()
    return text[0] if text else "libvips error"


def _saveable(im: pyvips.Image, fmt: str) -> pyvips.Image:
    """8-bit sRGB (or grey), alpha kept where the format has it, flattened on white for JPEG."""
    if im.format != "uchar" or im.interpretation not in ("srgb", "b-w"):
        grey = im.interpretation in ("b-w", "grey16")
        im = im.colourspace("b-w" if grey else "srgb")
        if im.format != "uchar":
            im = im.cast("uchar")
    if fmt == "jpeg" and im.hasalpha():
        im = im.flatten(background=[255] * (im.bands - 1))
    return im


def _save(im: pyvips.Image, spec: TransformSpec) -> bytes:
    keep = {"keep": pyvips.enums.ForeignKeep.NONE}  # no EXIF, XMP, IPTC, ICC, comments
    if spec.format == "webp":
        return im.webpsave_buffer(Q=spec.q, effort=4, **keep)
    if spec.format == "jpeg":
        return im.jpegsave_buffer(Q=spec.q, optimize_coding=True, **keep)
    if spec.format == "png":
        return im.pngsave_buffer(compression=6, **keep)
    return im.heifsave_buffer(Q=spec.q, compression="av1", effort=2, **keep)
