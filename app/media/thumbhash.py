"""ThumbHash: a ~25-byte placeholder of an image (Evan Wallace's algorithm, MIT licensed).

The image's average colour and a few low-frequency DCT terms of its luminance (L), two colour
differences (P: yellow-blue, Q: red-green) and alpha, quantised to 4 bits each. A client decodes
it into a blurred 32-pixel image to show while the real one loads.

This is the reference encoder and decoder (``rgbaToThumbHash``, ``thumbHashToRGBA``,
``thumbHashToAverageRGBA``, ``thumbHashToApproximateAspectRatio`` of the reference
implementations) written out in Python: there is no maintained package for it on PyPI. Its
rounding is JavaScript's ``Math.round`` (halves up), not Python's ``round`` (halves to even): the
bytes are the reference's, which tests/media/test_thumbhash.py checks against hashes made by
the reference JavaScript. Pure Python is fast enough for the at most 100x100 pixels it takes
(a few ms).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence

MAX_SIDE = 100  # the algorithm's own limit: a larger input is slower and no better


def _round(x: float) -> int:
    return math.floor(x + 0.5)


class _Channel:
    def __init__(self, nx: int, ny: int) -> None:
        self.nx, self.ny = nx, ny
        self.dc = 0.0
        self.scale = 0.0
        self.ac: list[float] = []

    def _terms(self) -> list[tuple[int, int]]:
        return [(cx, cy) for cy in range(self.ny)
                for cx in range(self.nx) if cx * self.ny < self.nx * (self.ny - cy)]

    def encode(self, w: int, h: int, values: Sequence[float]) -> _Channel:
        # The reference's order of operations exactly: terms that are zero in theory come out
        # as +-1e-17 noise, and its sign picks the nibble (7 or 8), so any other summation
        # order gives other bytes than the reference for the same image.
        ac = []
        for cx, cy in self._terms():
            fx = [math.cos(math.pi / w * cx * (x + 0.5)) for x in range(w)]
            f = 0.0
            for y in range(h):
                fy = math.cos(math.pi / h * cy * (y + 0.5))
                row = y * w
                for x in range(w):
                    f += values[row + x] * fx[x] * fy
            f /= w * h
            if cx or cy:
                ac.append(f)
                self.scale = max(self.scale, abs(f))
            else:
                self.dc = f
        if self.scale > 0:
            ac = [0.5 + 0.5 / self.scale * v for v in ac]
        self.ac = ac
        return self

    def decode(self, data: bytes, start: int, index: int, scale: float) -> int:
        self.ac = []
        for _ in self._terms()[1:]:  # every term but the DC
            nibble = (data[start + (index >> 1)] >> ((index & 1) << 2)) & 15
            self.ac.append((nibble / 7.5 - 1.0) * scale)
            index += 1
        return index

    def write(self, out: bytearray, start: int, index: int) -> int:
        for v in self.ac:
            out[start + (index >> 1)] |= _round(15.0 * v) << ((index & 1) << 2)
            index += 1
        return index


def encode(w: int, h: int, rgba: bytes | bytearray | memoryview) -> bytes:
    """The ThumbHash of a ``w`` x ``h`` image of RGBA bytes (not premultiplied), both sides
    at most 100."""
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise ValueError(f"{w}x{h} does not fit in {MAX_SIDE}x{MAX_SIDE}")
    if len(rgba) != w * h * 4:
        raise ValueError(f"expected {w * h * 4} bytes of RGBA, got {len(rgba)}")
    px = bytes(rgba)
    n = w * h
    avg_r = avg_g = avg_b = avg_a = 0.0
    for j in range(0, n * 4, 4):
        alpha = px[j + 3] / 255.0
        avg_r += alpha / 255.0 * px[j]
        avg_g += alpha / 255.0 * px[j + 1]
        avg_b += alpha / 255.0 * px[j + 2]
        avg_a += alpha
    if avg_a > 0:
        avg_r, avg_g, avg_b = avg_r / avg_a, avg_g / avg_a, avg_b / avg_a

    has_alpha = avg_a < n
    l_limit = 5 if has_alpha else 7  # fewer luminance terms when alpha needs the room
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    lum, p, q, a = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    for i in range(n):  # RGBA to LPQA, composited on the average colour
        j = i * 4
        alpha = px[j + 3] / 255.0
        r = avg_r * (1.0 - alpha) + alpha / 255.0 * px[j]
        g = avg_g * (1.0 - alpha) + alpha / 255.0 * px[j + 1]
        b = avg_b * (1.0 - alpha) + alpha / 255.0 * px[j + 2]
        lum[i] = (r + g + b) / 3.0
        p[i] = (r + g) / 2.0 - b
        q[i] = r - g
        a[i] = alpha

    l_ch = _Channel(max(3, lx), max(3, ly)).encode(w, h, lum)
    p_ch = _Channel(3, 3).encode(w, h, p)
    q_ch = _Channel(3, 3).encode(w, h, q)
    a_ch = _Channel(5, 5).encode(w, h, a) if has_alpha else None

    landscape = w > h
    header24 = (_round(63.0 * l_ch.dc)
                | (_round(31.5 + 31.5 * p_ch.dc) << 6)
                | (_round(31.5 + 31.5 * q_ch.dc) << 12)
                | (_round(31.0 * l_ch.scale) << 18)
                | ((1 << 23) if has_alpha else 0))
    header16 = ((ly if landscape else lx)
                | (_round(63.0 * p_ch.scale) << 3)
                | (_round(63.0 * q_ch.scale) << 9)
                | ((1 << 15) if landscape else 0))
    ac_start = 6 if has_alpha else 5
    ac_count = len(l_ch.ac) + len(p_ch.ac) + len(q_ch.ac) + (len(a_ch.ac) if a_ch else 0)
    out = bytearray(ac_start + (ac_count + 1) // 2)
    out[0], out[1], out[2] = header24 & 255, (header24 >> 8) & 255, (header24 >> 16) & 255
    out[3], out[4] = header16 & 255, (header16 >> 8) & 255
    if a_ch is not None:
        out[5] = _round(15.0 * a_ch.dc) | (_round(15.0 * a_ch.scale) << 4)
    index = l_ch.write(out, ac_start, 0)
    index = p_ch.write(out, ac_start, index)
    index = q_ch.write(out, ac_start, index)
    if a_ch is not None:
        a_ch.write(out, ac_start, index)
    return bytes(out)


def to_base64(hash_: bytes) -> str:
    """How the API carries a ThumbHash (standard alphabet, padded: what the reference demo
    prints and ``atob`` reads)."""
    return base64.b64encode(hash_).decode("ascii")


def average_rgba(hash_: bytes) -> tuple[float, float, float, float]:
    """The average colour a hash carries, each channel 0..1."""
    header = hash_[0] | (hash_[1] << 8) | (hash_[2] << 16)
    lum = (header & 63) / 63.0
    p = ((header >> 6) & 63) / 31.5 - 1.0
    q = ((header >> 12) & 63) / 31.5 - 1.0
    has_alpha = (header >> 23) != 0
    a = (hash_[5] & 15) / 15.0 if has_alpha else 1.0
    b = lum - 2.0 / 3.0 * p
    r = (3.0 * lum - b + q) / 2.0
    g = r - q
    return (min(1.0, max(0.0, r)), min(1.0, max(0.0, g)), min(1.0, max(0.0, b)), a)


def approximate_aspect_ratio(hash_: bytes) -> float:
    header = hash_[3]
    has_alpha = (hash_[2] & 0x80) != 0
    landscape = (hash_[4] & 0x80) != 0
    lx = (5 if has_alpha else 7) if landscape else header & 7
    ly = header & 7 if landscape else (5 if has_alpha else 7)
    return lx / ly


def decode(hash_: bytes) -> tuple[int, int, bytes]:
    """The placeholder a client would show: (width, height, RGBA bytes), at most 32 pixels a
    side. Here for tests and for anyone checking a stored hash."""
    header24 = hash_[0] | (hash_[1] << 8) | (hash_[2] << 16)
    header16 = hash_[3] | (hash_[4] << 8)
    l_dc = (header24 & 63) / 63.0
    p_dc = ((header24 >> 6) & 63) / 31.5 - 1.0
    q_dc = ((header24 >> 12) & 63) / 31.5 - 1.0
    l_scale = ((header24 >> 18) & 31) / 31.0
    has_alpha = (header24 >> 23) != 0
    p_scale = ((header16 >> 3) & 63) / 63.0
    q_scale = ((header16 >> 9) & 63) / 63.0
    landscape = (header16 >> 15) != 0
    lx = max(3, (5 if has_alpha else 7) if landscape else header16 & 7)
    ly = max(3, header16 & 7 if landscape else (5 if has_alpha else 7))
    a_dc = (hash_[5] & 15) / 15.0 if has_alpha else 1.0
    a_scale = ((hash_[5] >> 4) & 15) / 15.0 if has_alpha else 0.0

    ac_start = 6 if has_alpha else 5
    l_ch, p_ch, q_ch = _Channel(lx, ly), _Channel(3, 3), _Channel(3, 3)
    index = l_ch.decode(hash_, ac_start, 0, l_scale)
    # saturation boosted by 1.25 to make up for the quantisation, as the reference does
    index = p_ch.decode(hash_, ac_start, index, p_scale * 1.25)
    index = q_ch.decode(hash_, ac_start, index, q_scale * 1.25)
    a_ch = None
    if has_alpha:
        a_ch = _Channel(5, 5)
        a_ch.decode(hash_, ac_start, index, a_scale)

    ratio = approximate_aspect_ratio(hash_)
    w = _round(32.0 if ratio > 1 else 32.0 * ratio)
    h = _round(32.0 / ratio if ratio > 1 else 32.0)
    cx_stop, cy_stop = max(lx, 5 if has_alpha else 3), max(ly, 5 if has_alpha else 3)
    out = bytearray(w * h * 4)
    l_terms = l_ch._terms()[1:]
    pq_terms = _Channel(3, 3)._terms()[1:]
    a_terms = _Channel(5, 5)._terms()[1:]
    i = 0
    for y in range(h):
        fy = [math.cos(math.pi / h * (y + 0.5) * cy) for cy in range(cy_stop)]
        for x in range(w):
            fx = [math.cos(math.pi / w * (x + 0.5) * cx) for cx in range(cx_stop)]
            lum, p, q, a = l_dc, p_dc, q_dc, a_dc
            for (cx, cy), v in zip(l_terms, l_ch.ac, strict=True):
                lum += v * fx[cx] * fy[cy] * 2.0
            for (cx, cy), pv, qv in zip(pq_terms, p_ch.ac, q_ch.ac, strict=True):
                f = fx[cx] * fy[cy] * 2.0
                p += pv * f
                q += qv * f
            if a_ch is not None:
                for (cx, cy), v in zip(a_terms, a_ch.ac, strict=True):
                    a += v * fx[cx] * fy[cy] * 2.0
            b = lum - 2.0 / 3.0 * p
            r = (3.0 * lum - b + q) / 2.0
            g = r - q
            for k, v in enumerate((r, g, b, a)):
                out[i + k] = max(0, _round(255.0 * min(1.0, v)))
            i += 4
    return w, h, bytes(out)
