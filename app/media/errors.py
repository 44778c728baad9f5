"""What previews of PDFs and videos may cost, and how they fail."""

from __future__ import annotations

from dataclasses import dataclass

from app.media.derivatives import ImageProcessingError


class PreviewError(ImageProcessingError):
    """A PDF, video or audio file that cannot be previewed: permanent, like an image that cannot
    be decoded (the attachment becomes ``failed`` when its profile has derivatives).

    A subclass of ImageProcessingError so that every path that handles a bad image (promotion,
    reprocess, pools) handles these the same way; ``code`` says which kind of file and why.
    """

    CORRUPT_PDF = "corrupt_pdf"
    ENCRYPTED_PDF = "encrypted_pdf"
    EMPTY_PDF = "empty_pdf"
    TOO_MANY_PAGES = "too_many_pages"
    CORRUPT_VIDEO = "corrupt_video"
    NO_VIDEO_STREAM = "no_video_stream"
    CORRUPT_AUDIO = "corrupt_audio"
    TOO_LONG = "too_long"
    TOO_MANY_PIXELS = ImageProcessingError.TOO_MANY_PIXELS
    TIMEOUT = "preview_timeout"


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on one preview (STOWAGE_PREVIEW_* settings). Frame sizes are bounded by the
    profile's ``max_pixels`` like images (Pillow's limit when it sets none)."""

    max_pages: int = 10_000          # a PDF with more pages fails (too_many_pages)
    max_duration: float = 4 * 3600   # seconds; a longer video or audio file fails (too_long)
    timeout: float = 30.0            # seconds of decoding for one file (preview_timeout)
    # bytes of compressed video read while looking for the poster's keyframe before settling
    # for the first one found
    max_scan_bytes: int = 64 * 1024 * 1024
    # a profile without derivatives gets facts and a placeholder only for files up to this
    # size: past it, copying the file out of a remote store is not worth the extras
    extras_max_size: int = 512 * 1024 * 1024
