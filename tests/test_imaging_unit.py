"""Decoding and limits (pure logic)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobidem.errors import InvalidArgument, ResourceExhausted
from mobidem.imaging import ImageLimits, PixelFormat, decode_encoded, decode_raw

RGB = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)


def test_png_round_trip_is_exact():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert np.array_equal(decode_encoded(png.tobytes()), RGB)


@pytest.mark.parametrize("fmt, make", [
    (PixelFormat.RGB8, lambda a: a),
    (PixelFormat.BGR8, lambda a: a[..., ::-1]),
    (PixelFormat.RGBA8, lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])),
    (PixelFormat.BGRA8, lambda a: np.dstack([a[..., ::-1], np.zeros(a.shape[:2], np.uint8)])),
])
def test_raw_formats_with_stride(fmt, make):
    pixels = np.ascontiguousarray(make(RGB))
    row = pixels.shape[1] * pixels.shape[2]
    padded = np.zeros((30, row + 8), np.uint8)
    padded[:, :row] = pixels.reshape(30, row)
    out = decode_raw(40, 30, fmt, row + 8, padded.tobytes())
    assert np.array_equal(out, RGB)
    # the last row may omit its padding
    assert np.array_equal(decode_raw(40, 30, fmt, row + 8, padded.tobytes()[:-8]), RGB)


def test_gray_raw_becomes_rgb():
    gray = RGB[..., 0].copy()
    out = decode_raw(40, 30, PixelFormat.GRAY8, 0, gray.tobytes())
    assert out.shape == (30, 40, 3) and np.array_equal(out[..., 1], gray)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(width=40, height=30, fmt=1, stride=0, data=b"\0" * 10), InvalidArgument, "needs 3600 bytes"),
    (dict(width=40, height=30, fmt=1, stride=100, data=b"\0" * 3000), InvalidArgument, "stride 100 is smaller"),
    (dict(width=0, height=30, fmt=1, stride=0, data=b""), InvalidArgument, "positive"),
    (dict(width=9000, height=10, fmt=1, stride=0, data=b""), ResourceExhausted, "at most 8192"),
    (dict(width=40, height=30, fmt=0, stride=0, data=b""), InvalidArgument, "pixel format"),
    (dict(width=40, height=30, fmt=77, stride=0, data=b""), InvalidArgument, "pixel format"),
])
def test_raw_errors_say_what_to_fix(kwargs, error, words):
    with pytest.raises(error, match=words):
        decode_raw(**kwargs)


def test_pixel_count_limit():
    with pytest.raises(ResourceExhausted, match="pixels"):
        decode_raw(5000, 5000, 1, 0, b"", ImageLimits(max_pixels=1_000_000))


def test_encoded_size_limit_and_garbage():
    with pytest.raises(ResourceExhausted, match="bytes"):
        decode_encoded(b"x" * 101, ImageLimits(max_encoded_bytes=100))
    with pytest.raises(InvalidArgument, match="could not be decoded"):
        decode_encoded(b"\x89PNG\r\n\x1a\nnot really")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    try:
        out = decode_encoded(data)
        assert out.ndim == 3 and out.shape[2] == 3
    except (InvalidArgument, ResourceExhausted):
        pass
