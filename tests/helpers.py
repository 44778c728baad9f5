"""Small builders shared by the tests."""

from __future__ import annotations

import io

from PIL import Image


def jpeg_bytes(width: int = 64, height: int = 48, orientation: int | None = None) -> bytes:
    im = Image.new("RGB", (width, height), (200, 30, 30))
    buf = io.BytesIO()
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(buf, "JPEG", exif=exif.tobytes())
    else:
        im.save(buf, "JPEG")
    return buf.getvalue()


def png_bytes(width: int = 10, height: int = 10) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 0, 255, 128)).save(buf, "PNG")
    return buf.getvalue()


def multipart_body(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A hand-built body, so tests control part order and can break it on purpose."""
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out += f"Content-Disposition: {disp}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)
