"""ThumbHash (app.media.thumbhash) against the reference implementation's output.

The expected hashes were made with the reference JavaScript (evanw/thumbhash, js/thumbhash.js,
``rgbaToThumbHash``) on the same synthetic images, built here pixel for pixel as there. Terms
that are zero in theory come out as +-1e-17 in floating point, and the sign of that noise
(which differs between JavaScript's and C's cosine in the last bit) picks the nibble 7 or 8: such
images agree nibble for nibble within one, the others byte for byte.
"""

from __future__ import annotations

import base64

import pytest

from app.media import thumbhash


def image(kind: str, w: int, h: int) -> bytes:
    px = bytearray(w * h * 4)
    for y in range(h):
        for x in range(w):
            i = (y * w + x) * 4
            if kind == "gradient":
                px[i:i + 4] = bytes([255 * x // (w - 1), 255 * y // (h - 1), 128, 255])
            elif kind == "alpha":
                px[i:i + 4] = bytes([200, (x * 7 + y * 3) % 256, 40, 255 * x // (w - 1)])
            else:  # split: red left half, blue right half
                red = x < w / 2
                px[i:i + 4] = bytes([255 if red else 0, 0, 0 if red else 255, 255])
    return bytes(px)


# made by the reference JavaScript
EXACT = {
    ("gradient", 30, 100): "3wcKOhqAcIiIh3iHgHAI+Hc=",
    ("alpha", 64, 64): "34uCBQI3l0hqC5ZleeYfkgHegId4iId4dw==",
}
WITHIN_A_NIBBLE = {
    ("gradient", 100, 75): "3wcKNZqAh4eAiHeIeHiHiICACPh3",
}


@pytest.mark.parametrize(("kind", "w", "h"), list(EXACT))
def test_same_bytes_as_the_reference(kind: str, w: int, h: int) -> None:
    assert thumbhash.to_base64(thumbhash.encode(w, h, image(kind, w, h))) == EXACT[kind, w, h]


@pytest.mark.parametrize(("kind", "w", "h"), list(WITHIN_A_NIBBLE))
def test_noise_terms_within_one_step_of_the_reference(kind: str, w: int, h: int) -> None:
    ours = thumbhash.encode(w, h, image(kind, w, h))
    ref = base64.b64decode(WITHIN_A_NIBBLE[kind, w, h])
    assert len(ours) == len(ref) and ours[:5] == ref[:5]  # header: average, scales, sizes
    for a, b in zip(ours[5:], ref[5:], strict=True):
        assert abs((a & 15) - (b & 15)) <= 1 and abs((a >> 4) - (b >> 4)) <= 1


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 128, 0), (20, 40, 200), (250, 250, 250),
                                    (128, 128, 128)])
def test_average_colour_of_a_plain_image(colour: tuple[int, int, int]) -> None:
    hash_ = thumbhash.encode(16, 12, bytes([*colour, 255]) * (16 * 12))
    r, g, b, a = thumbhash.average_rgba(hash_)
    assert a == 1.0
    for got, want in zip((r, g, b), colour, strict=True):
        assert abs(got * 255 - want) <= 8
    # and the decoded placeholder is that colour everywhere
    w, h, px = thumbhash.decode(hash_)
    assert w == 32 and 20 <= h <= 26  # the ratio is kept roughly (7:5 here)
    for i in range(0, len(px), 4 * 37):
        assert all(abs(px[i + k] - colour[k]) <= 10 for k in range(3))


def test_alpha_and_aspect_ratio() -> None:
    hash_ = thumbhash.encode(64, 64, image("alpha", 64, 64))
    assert thumbhash.average_rgba(hash_)[3] < 1.0  # carries alpha
    w, h, px = thumbhash.decode(hash_)
    assert (w, h) == (32, 32)
    assert px[3] < px[(w - 1) * 4 + 3]  # transparent on the left, opaque on the right
    wide = thumbhash.encode(100, 25, image("gradient", 100, 25))
    assert thumbhash.approximate_aspect_ratio(wide) > 2.5
    tall = thumbhash.encode(25, 100, image("gradient", 25, 100))
    assert thumbhash.approximate_aspect_ratio(tall) < 0.4


def test_decoded_placeholder_keeps_the_left_right_split() -> None:
    w, h, px = thumbhash.decode(thumbhash.encode(90, 40, image("split", 90, 40)))
    left, right = px[(h // 2 * w + 2) * 4:][:3], px[(h // 2 * w + w - 3) * 4:][:3]
    assert left[0] > left[2] + 100 and right[2] > right[0] + 100


def test_refuses_what_the_algorithm_does_not_take() -> None:
    with pytest.raises(ValueError, match="100x100"):
        thumbhash.encode(101, 10, bytes(101 * 10 * 4))
    with pytest.raises(ValueError, match="RGBA"):
        thumbhash.encode(10, 10, bytes(10))
