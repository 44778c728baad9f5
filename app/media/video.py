"""Video posters and audio/video facts with PyAV (its wheels bundle FFmpeg: nothing to install).

The poster is the first keyframe at or after 1 s (the first frame of a shorter video): after a
seek to the keyframe before 1 s, packets are demuxed (cheap: no decoding) and only keyframes are
decoded, one of them in the end, so a poster costs one decoded frame whatever the video's length.
That frame is scaled by swscale straight to the size the derivatives need (with Lanczos headroom)
as it is converted to RGB: a 4K frame exists only as the decoder's own YUV picture, never as a
full-size RGB image. Bounds: the frame size (the profile's pixel limit), the duration, the bytes
scanned for the keyframe, the probe, and the time spent (checked between packets).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from app.media.derivatives import PLACEHOLDER_SPEC, REDUCING_GAP, DerivativeSpec, _needed
from app.media.errors import MediaLimits, PreviewError

POSTER_AT = 1.0  # seconds
# What FFmpeg may read to find the streams before giving up on guessing more (defaults are
# 5 MB / 5 s of media as well; set so that a future default cannot make it unbounded).
_OPEN_OPTIONS = {"probesize": str(5 * 1024 * 1024), "analyzeduration": str(5_000_000)}


def _open(path: str | Path, corrupt: str) -> Any:
    import av

    try:
        return av.open(str(path), options=_OPEN_OPTIONS)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise PreviewError(corrupt, f"the file cannot be read: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _codec(stream: Any) -> str:
    """The codec's own name ("mp3", "h264"), not its decoder's ("mp3float")."""
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _duration(container: Any, stream: Any) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    if stream is not None and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _check_duration(duration: float | None, limits: MediaLimits) -> None:
    if duration is not None and duration > limits.max_duration:
        raise PreviewError(PreviewError.TOO_LONG,
                           f"the file lasts {duration:.0f} s; the limit is"
                           f" {limits.max_duration:.0f} s")


def audio_facts(path: str | Path, limits: MediaLimits) -> dict[str, Any]:
    """``duration`` (seconds) and ``audio_codec`` of an audio file; reads headers only."""
    with _open(path, PreviewError.CORRUPT_AUDIO) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is None:
            raise PreviewError(PreviewError.CORRUPT_AUDIO, "the file has no audio stream")
        duration = _duration(container, audio)
        _check_duration(duration, limits)
        meta: dict[str, Any] = {"audio_codec": _codec(audio)}
        if duration is not None:
            meta["duration"] = round(duration, 3)
        if audio.codec_context.sample_rate:
            meta["sample_rate"] = audio.codec_context.sample_rate
        return meta


def poster(path: str | Path, specs: Iterable[DerivativeSpec], *, placeholder: bool,
           max_pixels: int, limits: MediaLimits, deadline: float
           ) -> tuple[Image.Image | None, dict[str, Any]]:
    """(the poster as an RGB image sized for ``specs`` and the placeholder, None when neither
    is wanted; ``duration``, ``width``, ``height``, ``video_codec``, ``audio_codec``)."""
    import av

    specs = list(specs) + ([PLACEHOLDER_SPEC] if placeholder else [])
    with _open(path, PreviewError.CORRUPT_VIDEO) as container:
        if not container.streams.video:
            raise PreviewError(PreviewError.NO_VIDEO_STREAM, "the file has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = ctx.width or 0, ctx.height or 0
        if width <= 0 or height <= 0:
            raise PreviewError(PreviewError.CORRUPT_VIDEO, "the video has no frame size")
        if width * height > max_pixels:
            raise PreviewError(PreviewError.TOO_MANY_PIXELS,
                               f"video frames are {width}x{height} ({width * height} pixels);"
                               f" the limit is {max_pixels}")
        duration = _duration(container, stream)
        _check_duration(duration, limits)
        audio = container.streams.audio[0] if container.streams.audio else None
        meta: dict[str, Any] = {
            "width": width, "height": height, "video_codec": _codec(stream),
            "audio_codec": _codec(audio) if audio is not None else None,
        }
        if duration is not None:
            meta["duration"] = round(duration, 3)
        if not specs:
            return None, meta
        ctx.thread_count = 1  # one frame buffer set, not one per thread (memory, not speed)
        ctx.skip_frame = "NONKEY"
        # FFmpeg's own guard: a keyframe whose parameter sets change the size mid-stream to
        # more than the limit is refused before its picture is allocated
        ctx.options = {"max_pixels": str(min(max_pixels, 2**31 - 1))}
        try:
            frame = _keyframe(container, stream, duration, limits, deadline)
        except av.FFmpegError as e:  # (ArgumentError is FFmpeg's EINVAL: max_pixels among them)
            raise PreviewError(PreviewError.CORRUPT_VIDEO,
                               f"the video cannot be decoded: {_reason(e)}") from None
        if frame is None:
            raise PreviewError(PreviewError.CORRUPT_VIDEO, "no frame of the video can be decoded")
        if frame.width * frame.height > max_pixels:  # the size changed mid-stream
            raise PreviewError(PreviewError.TOO_MANY_PIXELS,
                               f"a video frame is {frame.width}x{frame.height}; the limit is"
                               f" {max_pixels} pixels")
        turn = _rotation(frame)
        square = _square_pixels(frame.width, frame.height, stream)  # anamorphic: widened
        shown = (square[1], square[0]) if turn in (90, 270) else square
        needs = [_needed(spec, *shown) for spec in specs]
        # Lanczos headroom as for images, never more than the frame itself
        want_w = min(shown[0], math.ceil(max(w for w, _ in needs) * REDUCING_GAP))
        want_h = min(shown[1], math.ceil(max(h for _, h in needs) * REDUCING_GAP))
        if turn in (90, 270):
            want_w, want_h = want_h, want_w
        small = frame.reformat(width=want_w, height=want_h, format="rgb24",
                               interpolation="AREA")
        im = small.to_image()
        if turn:
            im = im.rotate(turn, expand=True)
        meta["width"], meta["height"] = shown
        return im, meta


def _square_pixels(width: int, height: int, stream: Any) -> tuple[int, int]:
    """The frame's size in square pixels: an anamorphic video (DVD, HDV; sample aspect ratio
    not 1) is shown wider or narrower than it is coded."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    try:
        ratio = float(sar) if sar else 1.0
    except (TypeError, ValueError, ZeroDivisionError):
        ratio = 1.0
    if not (0.1 <= ratio <= 10) or abs(ratio - 1) < 1e-3:  # absent, or nonsense
        return width, height
    return max(1, round(width * ratio)), height


def _rotation(frame: Any) -> int:
    """The display matrix's rotation (counter-clockwise degrees) as 0, 90, 180 or 270."""
    try:
        angle = float(getattr(frame, "rotation", 0) or 0)
    except (TypeError, ValueError):
        return 0
    if not math.isfinite(angle):
        return 0
    turn = round(angle / 90) * 90 % 360
    return turn if turn in (90, 180, 270) else 0


def _keyframe(container: Any, stream: Any, duration: float | None, limits: MediaLimits,
              deadline: float) -> Any:
    """The decoded poster frame, or None."""
    time_base = stream.time_base
    target = POSTER_AT if duration is None or duration > POSTER_AT else 0.0
    seeked = False
    if target > 0 and time_base:
        try:
            container.seek(int(target / time_base), stream=stream, backward=True)
            seeked = True
        except Exception:  # not seekable: read from the start (bounded all the same)
            pass
    fallback = None  # the first keyframe seen: the poster when none comes at/after `target`
    scanned = 0
    # half a frame of slack: a keyframe at 1 s may be stamped 0.99996 s
    slack = 0.5 / float(stream.average_rate) if stream.average_rate else 0.02
    for packet in container.demux(stream):
        if time.monotonic() > deadline:
            raise PreviewError(PreviewError.TIMEOUT, "finding the poster frame took too long")
        scanned += packet.size
        if packet.size == 0 and packet.pts is None and packet.dts is None:
            break  # the demuxer's flush packet: end of the stream
        if not packet.is_keyframe:
            if scanned > limits.max_scan_bytes:
                break
            continue
        stamp = packet.pts if packet.pts is not None else packet.dts
        at = float(stamp * time_base) if stamp is not None and time_base else None
        if at is not None and at + slack >= target:
            frame = _decode_one(stream, packet)
            if frame is not None:
                return frame
        elif fallback is None:
            fallback = packet
        if scanned > limits.max_scan_bytes:
            break
    if fallback is not None:
        return _decode_one(stream, fallback)
    if seeked:
        # the seek landed past every keyframe (a broken index): the first frame, then
        container.seek(0, stream=stream, backward=True)
        stream.codec_context.flush_buffers()
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise PreviewError(PreviewError.TIMEOUT, "finding the poster frame took too long")
            if packet.is_keyframe:
                return _decode_one(stream, packet)
    return None


def _decode_one(stream: Any, packet: Any) -> Any:
    """One keyframe decoded on its own (a decoder may hold it back until it is flushed)."""
    import av

    ctx = stream.codec_context
    try:
        frames = ctx.decode(packet)
        if not frames:
            frames = ctx.decode(None)  # drained: the decoder starts afresh after a flush
            ctx.flush_buffers()
    except av.error.InvalidDataError:
        ctx.flush_buffers()
        return None
    return frames[0] if frames else None
