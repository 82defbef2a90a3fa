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


# ------------------------------------------------------------------ formats, orientation, bombs
# The accepted formats are JPEG, PNG, WebP and HEIC/HEIF (docs/RELIABILITY.md); each is size-checked
# from its header before decoding, and its EXIF orientation is applied.

import io  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

from PIL import Image  # noqa: E402

# a wide test card: a red band on the left third, so orientation shows where the band ends up
CARD = np.zeros((60, 90, 3), np.uint8)
CARD[:, :30] = (255, 0, 0)


def _encode(fmt: str, rgb: np.ndarray, orientation: int = 1, **kw) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt, exif=exif.tobytes(), **kw)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_every_format_decodes_upright(fmt):
    # stored sideways (rotated 90 degrees counter-clockwise) with EXIF orientation 6 ("rotate 90 CW to view")
    stored = np.ascontiguousarray(np.rot90(CARD, 1))
    out = decode_encoded(_encode(fmt, stored, orientation=6, quality=95))
    assert out.shape == CARD.shape, f"{fmt}: orientation not applied ({out.shape})"
    assert out[30, 10, 0] > 200 and out[30, 10, 2] < 60, f"{fmt}: the red band is not on the left"
    assert out[30, 80, 0] < 60, f"{fmt}: the right side should be black"


def test_sixteen_bit_and_alpha_png():
    deep = (CARD.astype(np.uint16) * 257)  # 16-bit RGB, same picture
    ok, png16 = cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    out = decode_encoded(png16.tobytes())
    assert out.dtype == np.uint8 and np.array_equal(out, CARD)
    rgba = np.dstack([CARD, np.full(CARD.shape[:2], 128, np.uint8)])
    for fmt in ("PNG", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(rgba).save(buf, fmt, lossless=True)
        out = decode_encoded(buf.getvalue())
        assert out.shape == CARD.shape and np.abs(out.astype(int) - CARD).max() <= 2, fmt


def _png_bomb(w, h):
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return header + struct.pack(">I", zlib.crc32(header[12:]) & 0xFFFFFFFF) + b"\0" * 64


def _jpeg_bomb(w, h):
    small = _encode("JPEG", CARD)
    i = small.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    return small[:i + 5] + struct.pack(">HH", h, w) + small[i + 9:]


def _webp_bomb(w, h):
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x10\0\0\0" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + _encode("WEBP", CARD)[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _heif_bomb(w, h):
    # 128x64: whole coding blocks, so the file has no clean-aperture crop box to hide the claimed size
    small = bytearray(_encode("HEIF", np.zeros((64, 128, 3), np.uint8)))
    i = 0
    while (i := small.find(b"ispe", i + 1)) > 0:  # every image spatial extent: version/flags, width, height
        small[i + 8:i + 16] = struct.pack(">II", w, h)
    return bytes(small)


BOMBS = {"PNG": _png_bomb, "JPEG": _jpeg_bomb, "WEBP": _webp_bomb, "HEIF": _heif_bomb}


@pytest.mark.parametrize("side", [30000, 65535])
@pytest.mark.parametrize("fmt", sorted(BOMBS))
def test_header_bombs_refused_before_decoding(fmt, side):
    data = BOMBS[fmt](side, side)
    assert len(data) < 10_000
    with pytest.raises(ResourceExhausted, match=f"{side}x{side}"):
        decode_encoded(data)


@pytest.mark.parametrize("fmt, pil_fmt", [("TIFF", "TIFF"), ("BMP", "BMP"), ("GIF", "GIF")])
def test_other_formats_are_refused_unread(fmt, pil_fmt):
    buf = io.BytesIO()
    Image.fromarray(CARD).save(buf, pil_fmt)
    with pytest.raises(InvalidArgument, match="JPEG, PNG, WebP or HEIC"):
        decode_encoded(buf.getvalue())
    # the ~70-byte BMP that claims 50000x50000: refused the same way, never decoded
    bmp = b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 0, 0, 0, 0)
    with pytest.raises(InvalidArgument, match="format not accepted"):
        decode_encoded(bmp + b"\0" * 16)


def test_each_side_and_the_pixel_count_are_checked_from_the_header():
    limits = ImageLimits(max_side=1000, max_pixels=500_000)
    for w, h in ((1001, 10), (10, 1001)):  # width alone, height alone
        with pytest.raises(ResourceExhausted, match="at most 1000"):
            decode_encoded(_jpeg_bomb(w, h), limits)
    with pytest.raises(ResourceExhausted, match="pixels"):
        decode_encoded(_jpeg_bomb(900, 900), limits)
