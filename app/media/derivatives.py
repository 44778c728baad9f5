"""Derivatives (thumbnails and friends): pure, synchronous, CPU-bound image work.

Nothing here touches the event loop, the database or storage: the worker hands a source (a path,
or bytes) and the profile's derivative specs to :func:`build_all` in a bounded process or thread
pool, and stores what comes back. Pillow releases the GIL while decoding, resizing and encoding,
so a thread pool scales too; everything returned or raised here pickles, so a process pool works.

Pipeline, for every source (see :func:`build_all`):

1. open (header only) and refuse what is not an image (``not_an_image``), an image format outside
   :data:`SUPPORTED_FORMATS` (``unsupported_image``), or more pixels than ``max_pixels``
   (``too_many_pixels``) — all before a single pixel is decoded;
2. JPEG: draft mode, so libjpeg decodes at 1/2, 1/4 or 1/8 scale straight away, keeping at least
   :data:`REDUCING_GAP` times the largest size any spec needs (``cover`` needs the covering size,
   not the box, so cropping still has the resolution it needs);
3. decode the first frame only (animated GIF/WebP/PNG, MPO); truncated or corrupt data is
   ``corrupt_image`` (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched);
4. apply the EXIF orientation (``ImageOps.exif_transpose``);
5. normalise the mode to L, LA, RGB or RGBA (palette, 1-bit, 16-bit, CMYK, ...) and convert
   colours to sRGB when the image carries an ICC profile and LittleCMS is available;
6. other formats: ``Image.reduce`` by an integer factor, again keeping REDUCING_GAP headroom;
7. per spec: ``contain`` or ``cover`` with Lanczos, then encode. Alpha is kept for WebP and PNG
   and flattened on white for JPEG. Outputs carry no EXIF, GPS, XMP, comments or text chunks;
   they carry no ICC profile either (they are sRGB) unless the sRGB conversion was impossible
   and the source profile is an RGB one, in which case that profile is embedded as is.

Sizing rules (documented contract):

* ``contain``: the largest size that fits inside ``width`` x ``height`` with the aspect ratio
  kept, **never upscaled** — a 100x80 source stays 100x80 in a 200x200 box.
* ``cover``: exactly ``width`` x ``height``, centre-cropped (``ImageOps.fit``); a source smaller
  than the box **is upscaled**, because the box size is the promise ``cover`` makes.

Pixel limit: ``max_pixels`` is the policy (the profile's). ``None`` falls back to Pillow's
process-wide ``Image.MAX_IMAGE_PIXELS`` (about 89.5 MP by default), so "no limit configured"
never means "no limit". Pillow itself refuses, at open, anything above twice its own limit; that
refusal is reported as ``too_many_pixels`` as well, with a detail that says which limit fired. A
deployment with a profile allowing more than ``2 * Image.MAX_IMAGE_PIXELS`` should raise
``Image.MAX_IMAGE_PIXELS`` at worker start-up.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.media.image import ROTATED, orientation

try:
    from PIL import ImageCms
except ImportError:  # Pillow built without LittleCMS: colours are converted naively
    ImageCms = None  # type: ignore[assignment]

Fit = Literal["contain", "cover"]
Format = Literal["webp", "jpeg", "png"]
Source = str | Path | bytes | bytearray | memoryview

MIME_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {"webp": ".webp", "jpeg": ".jpg", "png": ".png"}
_PIL_FORMATS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}

# Formats decoded at all. Everything else Pillow can identify (EPS, which runs Ghostscript, PSD,
# ICNS, PCX, ...) is refused as unsupported_image: smaller attack surface, predictable results.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF"})

# Decode (JPEG draft) or reduce (everything else) to no less than this many times the size a
# spec needs, then resample with Lanczos: Pillow's own thumbnail() default, good quality.
REDUCING_GAP = 2.0
# Largest derivative side accepted in a spec: a cover box is allocated whatever the source size.
MAX_DIMENSION = 8192

# Leading bytes of the image formats we know: such a file that fails to open is corrupt, not
# "not an image".
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
)
_ISOBMFF_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")


class ImageProcessingError(Exception):
    """A permanent failure: retrying will not help, the attachment becomes ``failed``.

    ``code`` is one of ``not_an_image``, ``corrupt_image``, ``too_many_pixels``,
    ``unsupported_image``; ``detail`` is a human-readable sentence.
    """

    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNSUPPORTED_IMAGE = "unsupported_image"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)  # args == (code, detail): pickles across a process pool
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class DerivativeSpec(BaseModel):
    """One derivative of a profile (a ``[profiles.NAME.derivatives.DNAME]`` table); its name
    is the key it is listed under (see :data:`DerivativeName`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    width: int = Field(ge=1, le=MAX_DIMENSION)
    height: int = Field(ge=1, le=MAX_DIMENSION)
    fit: Fit = "contain"
    format: Format = "webp"
    quality: int = Field(default=80, ge=1, le=100)  # JPEG and WebP; PNG is lossless

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.format]


# The picture a ThumbHash is computed from: at most this many pixels a side (the algorithm
# takes 100 at most; its few DCT terms need no more, and the encoder is pure Python).
PLACEHOLDER_SIDE = 64
PLACEHOLDER_SPEC = DerivativeSpec(width=PLACEHOLDER_SIDE, height=PLACEHOLDER_SIDE)
_PLACEHOLDER = "\0placeholder"  # never a derivative's name (DerivativeName forbids it)

# A derivative's name goes into storage keys and URLs.
DerivativeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


@dataclass(frozen=True)
class Rendered:
    data: bytes
    mime_type: str
    width: int
    height: int
    ext: str  # ".webp", ".jpg" or ".png"

    @property
    def size(self) -> int:
        return len(self.data)


def build_derivative(
    source_path_or_bytes: Source, spec: DerivativeSpec, *, max_pixels: int | None
) -> Rendered:
    """One derivative of an image file (path) or of image bytes. See the module docstring."""
    return build_all(source_path_or_bytes, {"d": spec}, max_pixels=max_pixels)["d"]


def build_all(
    source: Source, specs: Mapping[str, DerivativeSpec], *, max_pixels: int | None
) -> dict[str, Rendered]:
    """Every derivative of one source, by the names of ``specs``; the source is decoded once.

    Raises :class:`ImageProcessingError` for anything wrong with the image itself. A missing or
    unreadable *file* raises the usual ``OSError`` (not permanent: it is not the image's fault).
    """
    if not specs:
        return {}
    return build_image(source, specs, max_pixels=max_pixels)[0]


def build_image(
    source: Source, specs: Mapping[str, DerivativeSpec], *, max_pixels: int | None,
    placeholder: bool = False,
) -> tuple[dict[str, Rendered], Image.Image | None]:
    """:func:`build_all`, and with ``placeholder`` the image at most PLACEHOLDER_SIDE pixels a
    side (for its ThumbHash), from the same decode; works with no specs too."""
    wanted = dict(specs)
    if placeholder:
        wanted[_PLACEHOLDER] = PLACEHOLDER_SPEC
    with _open(source) as im:
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        width, height = im.size
        if limit is not None and width * height > limit:
            raise ImageProcessingError(
                ImageProcessingError.TOO_MANY_PIXELS,
                f"image is {width}x{height} ({width * height} pixels); the limit is {limit}",
            )
        jpeg = im.format in ("JPEG", "MPO")
        if not jpeg:
            _load(im)  # no draft mode to set first; and PNG may keep its EXIF after the pixels
        turn = orientation(im)
        rotated = turn in ROTATED
        shown = (height, width) if rotated else (width, height)
        needs = {name: _needed(spec, *shown) for name, spec in wanted.items()}
        # Keep REDUCING_GAP times the largest need, width and height taken separately.
        want = (
            math.ceil(max(w for w, _ in needs.values()) * REDUCING_GAP),
            math.ceil(max(h for _, h in needs.values()) * REDUCING_GAP),
        )
        if jpeg:
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below `want`
            im.draft("RGB", (want[1], want[0]) if rotated else (want[0], want[1]))
            _load(im)
        base = _transpose(im, turn)
        base, icc = _normalize(base)
        factor = min(base.width // want[0], base.height // want[1])
        if factor >= 2:
            base = base.reduce(factor)
        # Rendered inside the `with`: `base` may still be the opened image itself.
        return _render_all(base, icc, specs, needs, placeholder)


def render_decoded(
    base: Image.Image, specs: Mapping[str, DerivativeSpec], *, placeholder: bool = False
) -> tuple[dict[str, Rendered], Image.Image | None]:
    """Derivatives (and the placeholder image) of a picture already decoded at the size they
    need (a PDF page, a video frame): the same sizing, fit and encoding as images get."""
    base, icc = _normalize(base)
    wanted = dict(specs)
    if placeholder:
        wanted[_PLACEHOLDER] = PLACEHOLDER_SPEC
    needs = {name: _needed(spec, *base.size) for name, spec in wanted.items()}
    return _render_all(base, icc, specs, needs, placeholder)


def _render_all(
    base: Image.Image, icc: bytes | None, specs: Mapping[str, DerivativeSpec],
    needs: Mapping[str, tuple[int, int]], placeholder: bool,
) -> tuple[dict[str, Rendered], Image.Image | None]:
    rendered = {name: _render(base, icc, spec, needs[name]) for name, spec in specs.items()}
    small = None
    if placeholder:
        small = base.resize(needs[_PLACEHOLDER], Image.Resampling.BOX)
        small = small.convert("RGBA" if small.mode in ("LA", "RGBA") else "RGB")
    return rendered, small


# -- opening and decoding ---------------------------------------------------------------------


@contextmanager
def _open(source: Source) -> Iterator[ImageFile.ImageFile]:
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:16])
        fp: Any = io.BytesIO(source)
    else:
        # Pillow opens (and later maps or streams) the file itself: it is never read whole.
        # Reading the head here first lets a missing or unreadable file raise its own OSError.
        with open(source, "rb") as f:
            head = f.read(16)
        fp = source
    Image.init()
    formats = [f for f in SUPPORTED_FORMATS if f in Image.OPEN]
    try:
        im = _pil_open(fp, formats)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        if _looks_like_image(head):
            raise ImageProcessingError(
                ImageProcessingError.CORRUPT_IMAGE, "the image header cannot be read"
            ) from None
        raise _unsupported_or_not_an_image(fp) from None
    with im:
        yield im


def _pil_open(fp: Any, formats: list[str] | None) -> ImageFile.ImageFile:
    if isinstance(fp, io.BytesIO):
        fp.seek(0)
    try:
        with warnings.catch_warnings():
            # The limit is ours (checked right after open); Pillow's warning is only noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=formats)
    except Image.DecompressionBombError as e:
        raise ImageProcessingError(
            ImageProcessingError.TOO_MANY_PIXELS,
            f"{e} (refused by Pillow's process-wide PIL.Image.MAX_IMAGE_PIXELS="
            f"{Image.MAX_IMAGE_PIXELS}, which allows twice that at most)",
        ) from None


def _unsupported_or_not_an_image(fp: Any) -> ImageProcessingError:
    """After a supported-formats-only open failed: is it an image of another kind?"""
    try:
        with _pil_open(fp, None) as im:
            kind = im.format
    except Exception:
        kind = None
    if kind is None:
        return ImageProcessingError(
            ImageProcessingError.NOT_AN_IMAGE, "the file is not an image that can be read"
        )
    return ImageProcessingError(
        ImageProcessingError.UNSUPPORTED_IMAGE,
        f"image format {kind} is not supported "
        f"(supported: {', '.join(sorted(SUPPORTED_FORMATS))})",
    )


def _looks_like_image(head: bytes) -> bool:
    return (
        head.startswith(_IMAGE_SIGNATURES)
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or (head[4:8] == b"ftyp" and head[8:12] in _ISOBMFF_BRANDS)
    )


def _load(im: ImageFile.ImageFile) -> None:
    """Decode the current (first) frame; any failure here is the data's fault."""
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise ImageProcessingError(ImageProcessingError.TOO_MANY_PIXELS, str(e)) from None
    except MemoryError:
        raise
    except Exception as e:  # Pillow decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise ImageProcessingError(
            ImageProcessingError.CORRUPT_IMAGE, f"the image data cannot be decoded: {e}"
        ) from None


def _transpose(im: Image.Image, turn: int) -> Image.Image:
    if turn == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # EXIF unreadable after all: show the image as stored
        return im


def _needed(spec: DerivativeSpec, width: int, height: int) -> tuple[int, int]:
    """For a displayed source size: ``contain``'s output size; ``cover``'s size before cropping.

    Either way, the size the derivative is resampled from, which draft/reduce must preserve.
    """
    if spec.fit == "contain":
        scale = min(spec.width / width, spec.height / height, 1.0)
        return (
            min(spec.width, max(1, round(width * scale))),
            min(spec.height, max(1, round(height * scale))),
        )
    scale = max(spec.width / width, spec.height / height)
    if scale >= 1.0:  # upscaled: the whole source is needed
        return width, height
    return max(spec.width, round(width * scale)), max(spec.height, round(height * scale))


# -- colour ------------------------------------------------------------------------------------


def _normalize(im: Image.Image) -> tuple[Image.Image, bytes | None]:
    """The image in L, LA, RGB or RGBA; sRGB when an ICC profile allowed converting.

    Also returns the ICC profile outputs must embed: None for sRGB (and grey), the source's own
    RGB profile when converting it was impossible. The image's ``info`` is left as it is: the
    encoder is never given it (see ``_render``).
    """
    icc = im.info.get("icc_profile") or None
    mode = im.mode
    transparent = mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if transparent else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I"):  # 16/32-bit grey (PNG, TIFF): 0..65535 down to 0..255
        im = im.convert("I").point(lambda v: v / 256).convert("L")
    elif mode == "F":
        im = im.convert("L")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("RGBa", "RGBX"):
        im = im.convert("RGBA" if mode == "RGBa" else "RGB")
    elif mode in ("L", "RGB") and transparent:
        im = im.convert("LA" if mode == "L" else "RGBA")
    elif mode == "CMYK":
        converted = _to_srgb(im, icc, "RGB")
        return (converted if converted is not None else im.convert("RGB")), None
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            im = im.convert("RGB")
        except ValueError:
            raise ImageProcessingError(
                ImageProcessingError.UNSUPPORTED_IMAGE, f"image mode {mode} is not supported"
            ) from None
    if im.mode in ("RGB", "RGBA") and icc is not None and _icc_space(icc) == b"RGB ":
        converted = _to_srgb(im, icc, im.mode)
        if converted is not None:
            return converted, None
        return im, icc  # keep the colours right the only other way there is
    return im, None


def _icc_space(icc: bytes) -> bytes:
    return icc[16:20]  # the profile header's data colour space: b"RGB ", b"CMYK", b"GRAY"


@lru_cache(maxsize=1)
def _srgb_profile() -> Any:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@lru_cache(maxsize=16)
def _transform(icc: bytes, in_mode: str, out_mode: str) -> Any:
    """Cached per profile; NOCACHE (LittleCMS's one-pixel cache) makes sharing it across threads
    safe."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(
        source, _srgb_profile(), in_mode, out_mode, flags=ImageCms.Flags.NOCACHE
    )


def _to_srgb(im: Image.Image, icc: bytes | None, out_mode: str) -> Image.Image | None:
    if ImageCms is None or icc is None:
        return None
    try:
        return ImageCms.applyTransform(im, _transform(icc, im.mode, out_mode))
    except Exception:  # a broken or mismatched profile: the caller falls back
        return None


# -- resizing and encoding ---------------------------------------------------------------------


def _render(
    base: Image.Image, icc: bytes | None, spec: DerivativeSpec, need: tuple[int, int]
) -> Rendered:
    """``need``: the contain size computed on the source's own size (``base`` may be reduced)."""
    if spec.fit == "cover":
        im = ImageOps.fit(base, (spec.width, spec.height), method=Image.Resampling.LANCZOS)
    elif need != base.size:
        im = base.resize(need, Image.Resampling.LANCZOS)
    else:
        im = base.copy()
    im = _for_format(im, spec.format)
    im.info = {}  # never mutates `base`: `im` is always a new image here
    options: dict[str, Any] = {}
    if spec.format == "jpeg":
        options = {"quality": spec.quality, "optimize": True}
    elif spec.format == "webp":
        options = {"quality": spec.quality, "method": 4}
    if icc is not None and im.mode in ("RGB", "RGBA"):
        options["icc_profile"] = icc
    out = io.BytesIO()
    im.save(out, _PIL_FORMATS[spec.format], **options)
    return Rendered(
        data=out.getvalue(),
        mime_type=spec.mime_type,
        width=im.width,
        height=im.height,
        ext=spec.ext,
    )


def _for_format(im: Image.Image, fmt: str) -> Image.Image:
    if fmt == "jpeg" and im.mode in ("LA", "RGBA"):  # JPEG has no alpha: flatten on white
        flat = Image.new(im.mode[:-1], im.size, 255 if im.mode == "LA" else (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A"))
        return flat
    if fmt == "webp" and im.mode in ("L", "LA"):  # WebP is RGB(A) only
        return im.convert("RGBA" if im.mode == "LA" else "RGB")
    return im
