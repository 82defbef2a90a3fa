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


# ------------------------------------------------------------------ the header reader (found by `make mutants`)

from mobidem.imaging import _encoded_size, heif_size  # noqa: E402

# ITU-T T.81 Table B.1: the start-of-frame markers SOF0-SOF15 (all carry the frame's size), which are
# every marker C0-CF except DHT (C4), JPG (C8) and DAC (CC)
SOF_MARKERS = [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
APP0 = b"\xff\xe0" + (16).to_bytes(2, "big") + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _sof(marker: int, width: int, height: int) -> bytes:  # precision, height, width, 3 components
    return _segment(marker, bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([3]) + bytes(9))


@pytest.mark.parametrize("marker", SOF_MARKERS, ids=[f"{m:02X}" for m in SOF_MARKERS])
def test_every_start_of_frame_marker_gives_the_size(marker):
    data = b"\xff\xd8" + APP0 + _sof(marker, 300, 200) + bytes(32)
    assert _encoded_size(data) == (300, 200)


def test_segments_that_are_not_a_frame_header_are_skipped():
    # DHT, JPG and DAC (C4, C8, CC) sit in the C0-CF range but hold no size: bytes that would read as a
    # 65535x65535 frame must be skipped; so must a second segment after the first (lengths add up)
    lookalike = bytes([8, 0xFF, 0xFF, 0xFF, 0xFF, 3]) + bytes(9)
    data = (b"\xff\xd8" + APP0 + _segment(0xC4, lookalike) + _segment(0xC8, lookalike) + _segment(0xCC, lookalike)
            + _segment(0xDB, bytes(65)) + _sof(0xC0, 640, 480) + bytes(32))
    assert _encoded_size(data) == (640, 480)


@pytest.mark.parametrize("between", [
    b"\xff",                                          # one fill byte before a marker (T.81 B.1.1.2)
    b"\xff\xff\xff",                                  # several
    b"\xff\x01",                                      # TEM, a marker without a length
    b"\xff\xd0\xff\xd7",                              # RST0 and RST7, markers without a length
    b"\xff\xd8",                                      # a second SOI
    b"\x00\x12",                                      # stray bytes between segments
])
def test_markers_without_a_length_fill_bytes_and_stray_bytes_are_stepped_over(between):
    data = b"\xff\xd8" + between + APP0 + between + _sof(0xC2, 1234, 56) + bytes(32)
    assert _encoded_size(data) == (1234, 56)


@pytest.mark.parametrize("params", [[], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]], ids=["baseline", "progressive"])
def test_real_jpegs_and_pngs_report_their_own_width_and_height(params):
    image = np.zeros((45, 123, 3), np.uint8)
    assert _encoded_size(cv2.imencode(".jpg", image, params)[1].tobytes()) == (123, 45)
    png = cv2.imencode(".png", image)[1].tobytes()
    assert _encoded_size(png) == (123, 45)
    assert _encoded_size(png[:24]) == (123, 45)  # the signature and IHDR's size are all it reads
    assert _encoded_size(png[:23]) is None
    assert _encoded_size(b"\xff\xd8" + APP0) is None  # no frame header at all
    big = np.zeros((300, 70000 // 256, 3), np.uint8)
    assert _encoded_size(cv2.imencode(".png", big)[1].tobytes()) == (273, 300)


def test_heif_size_is_the_primary_images_width_and_height():
    data = _encode("HEIF", np.zeros((64, 128, 3), np.uint8))
    assert heif_size(data) == (128, 64)
    assert heif_size(_heif_bomb(40000, 30000)) == (40000, 30000)


from mobidem.imaging import _check_dims, sniff, webp_size  # noqa: E402


@pytest.mark.parametrize("options, chunk", [({"lossless": True}, b"VP8L"), ({"quality": 80}, b"VP8 "),
                                            ({"quality": 80, "exif": "orientation"}, b"VP8X")])
def test_webp_size_of_each_bitstream(options, chunk):
    """The three WebP layouts (lossless, lossy, extended) each give the size from their own header."""
    if options.get("exif"):
        exif = Image.Exif()
        exif[0x0112] = 1
        options = {**options, "exif": exif.tobytes()}
    out = io.BytesIO()
    Image.fromarray(np.zeros((300, 517, 3), np.uint8)).save(out, "WEBP", **options)
    data = out.getvalue()
    assert data[12:16] == chunk
    assert webp_size(data) == (517, 300)
    assert sniff(data) == "WEBP" and sniff(b"RIFF\0\0\0\0WEBX") is None and sniff(b"RIFX" + data[4:]) is None


def test_the_limits_are_inclusive_and_name_the_numbers():
    limits = ImageLimits(max_side=100, max_pixels=5000)
    for ok in ((100, 50), (50, 100), (1, 1), (100, 1)):
        _check_dims(*ok, limits)  # at the limit is accepted
    for bad, words in [((101, 1), "101x1; each side must be at most 100"),
                       ((1, 101), "1x101; each side must be at most 100"),
                       ((71, 71), "71x71 = 5041 pixels; at most 5000"),
                       ((0, 5), "must be positive, got 0x5"), ((5, 0), "must be positive, got 5x0")]:
        with pytest.raises((InvalidArgument, ResourceExhausted)) as info:
            _check_dims(*bad, limits)
        assert words in str(info.value)
    assert sniff(b"\xff\xd8\xff\xe0") == "JPEG" and sniff(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff(b"\0\0\0\x18ftypheic") == "HEIF" and sniff(b"\0\0\0\x18ftypavif") is None


# ------------------------------------------------------------------ survivors of the deb9509 mutation run

from mobidem.imaging import Decoded, _decode_pillow, decode_reduced  # noqa: E402


def test_png_ihdr_width_and_height_are_four_byte_big_endian():
    """PNG spec 11.2.2: IHDR's width and height are 4-byte big-endian; a side of 2^24 + 1 must not read as 1."""
    def ihdr(w, h):
        body = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    assert _encoded_size(ihdr(2**24 + 1, 7)) == (2**24 + 1, 7)
    assert _encoded_size(ihdr(7, 2**24 + 1)) == (7, 2**24 + 1)
    with pytest.raises(ResourceExhausted, match="16777217x7"):
        decode_encoded(ihdr(2**24 + 1, 7))


def test_a_frame_header_right_after_soi_and_one_cut_short():
    # T.81 B.2.2: SOF = marker, Lf (2), P (1), Y (2), X (2), Nf (1) ...; 12 bytes reach Nf
    sof = b"\xff\xd8" + b"\xff\xc0" + (17).to_bytes(2, "big") + bytes([8]) + (480).to_bytes(2, "big") \
        + (640).to_bytes(2, "big") + bytes([3])
    assert _encoded_size(sof) == (640, 480)
    assert _encoded_size(sof[:-1]) is None  # the file ends inside its frame header: no header found
    with pytest.raises(InvalidArgument, match="no image header found; send a complete file"):
        decode_encoded(sof[:-1] + b"")


def test_one_stray_byte_before_the_frame_header():
    data = b"\xff\xd8" + b"\x00" + _sof(0xC0, 640, 480) + bytes(32)
    assert _encoded_size(data) == (640, 480)


def test_an_exif_thumbnail_inside_a_long_app1_is_not_the_image_size():
    """A phone JPEG's APP1 (EXIF, often > 255 bytes) holds a thumbnail with its own SOF; its 2-byte length
    (T.81 B.1.1.4) must skip all of it, so the bomb behind it is still seen."""
    thumb = _sof(0xC0, 160, 120)
    # the thumbnail lies past the first (length mod 256) bytes: read with one length byte, the scan lands on it
    app1 = _segment(0xE1, b"Exif\x00\x00" + bytes(200) + thumb + bytes(300))
    assert len(app1) - 2 > 256 and (len(app1) - 2) % 256 < 200
    data = b"\xff\xd8" + app1 + _sof(0xC0, 9000, 9000) + bytes(32)
    assert _encoded_size(data) == (9000, 9000)
    with pytest.raises(ResourceExhausted, match="9000x9000"):
        decode_encoded(data)


def _riff(chunk: bytes, body: bytes) -> bytes:  # RIFF container (WebP container spec): 'RIFF' size 'WEBP' chunk
    payload = b"WEBP" + chunk + len(body).to_bytes(4, "little") + body
    return b"RIFF" + len(payload).to_bytes(4, "little") + payload


def test_webp_headers_of_exactly_their_minimum_length():
    # VP8X: flags (4), canvas width - 1 (3, LE), canvas height - 1 (3, LE) = 10 bytes
    assert webp_size(_riff(b"VP8X", bytes(4) + (516).to_bytes(3, "little") + (299).to_bytes(3, "little"))) \
        == (517, 300)
    # VP8L: signature 0x2F, then 14 bits width - 1, 14 bits height - 1 (LE) = 5 bytes
    bits = 516 | (299 << 14)
    assert webp_size(_riff(b"VP8L", b"\x2f" + bits.to_bytes(4, "little"))) == (517, 300)
    # VP8 key frame (RFC 6386 9.1): frame tag (3), start code 9d 01 2a, width (2, LE, 14 bits), height (2)
    assert webp_size(_riff(b"VP8 ", bytes(3) + b"\x9d\x01\x2a" + (517).to_bytes(2, "little")
                           + (300).to_bytes(2, "little"))) == (517, 300)


@pytest.mark.parametrize("chunk, body", [
    (b"VP8L", b"\x2f\x00\x00"),                                  # lossless header cut short
    (b"VP8 ", bytes(3) + b"\x9d\x01\x2a\x05"),                   # lossy key frame cut short
    (b"VP8X", bytes(9)),                                         # extended header cut short
    (b"ALPH", b"\x2f" + bytes(2) + b"\x9d\x01\x2a" + bytes(8)),  # not a first chunk at all
])
def test_malformed_webp_headers_say_so(chunk, body):
    data = _riff(chunk, body)
    with pytest.raises(InvalidArgument, match=r"WebP image could not be decoded \(\d+ bytes\): its header is "
                                              r"malformed; send a complete file"):
        webp_size(data)


def test_a_webp_whose_header_is_fine_but_its_pixels_are_not():
    good = _encode("WEBP", CARD, quality=80)
    broken = good[:40] + bytes(len(good) - 40)
    with pytest.raises(InvalidArgument, match=rf"WEBP image could not be decoded \({len(broken)} bytes: .*\); "
                                              r"send a complete JPEG, PNG, WebP or HEIC/HEIF file"):
        decode_encoded(broken)


def test_a_broken_heif_says_so():
    good = _encode("HEIF", CARD)
    with pytest.raises(InvalidArgument, match=r"(?s)HEIF image could not be decoded \(\d+ bytes: .*send a complete file"):
        decode_encoded(good[:60])  # its container cut inside the meta box
    with pytest.raises(InvalidArgument, match=r"(?s)HEIF image could not be decoded \(\d+ bytes: .*send a complete file"):
        decode_encoded(good[:-30])  # its coded data cut short
    # a sideways HEIF whose last 60 bytes (its EXIF among them) were zeroed in transfer: the container opens,
    # the orientation cannot be read
    sideways = _encode("HEIF", np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8), orientation=6)
    zeroed = sideways[:-60] + bytes(60)
    with pytest.raises(InvalidArgument, match=rf"(?s)^HEIF image could not be decoded \({len(zeroed)} bytes: "
                                              r".*\); send a complete file$"):
        decode_encoded(zeroed)


def test_the_encoded_size_limit_is_inclusive_and_messages_name_the_bytes():
    png = cv2.imencode(".png", CARD)[1].tobytes()
    assert decode_encoded(png, ImageLimits(max_encoded_bytes=len(png))).shape == CARD.shape
    with pytest.raises(InvalidArgument, match=r"image is empty \(0 bytes\)"):
        decode_encoded(b"")
    data = bytes(range(1, 20))
    with pytest.raises(InvalidArgument) as info:
        decode_encoded(data)
    assert f"({len(data)} bytes, starting {data[:8].hex()}): send JPEG" in str(info.value)
    with pytest.raises(InvalidArgument, match=r"JPEG image could not be decoded \(\d+ bytes\): send a complete file"):
        decode_encoded(b"\xff\xd8\xff" + _sof(0xC0, 64, 48)[1:] + bytes(8))


def _jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    return _encode("JPEG", np.zeros((height, width, 3), np.uint8), orientation=orientation, quality=80)


def test_decode_reduced_picks_the_largest_reduction_that_keeps_the_long_side():
    """1/2, 1/4 or 1/8, the largest keeping the longer side >= decode_min_side; never below 1/8; other
    formats at full size (decode_reduced's docstring)."""
    jpeg = _jpeg(1600, 1200)
    for min_side, scale in ((0, 1), (801, 1), (800, 2), (400, 4), (201, 4), (200, 8), (50, 8)):
        out = decode_reduced(jpeg, ImageLimits(decode_min_side=min_side))
        assert (out.scale, out.width, out.height) == (scale, 1600, 1200), min_side
        assert out.pixels.shape == (1200 // scale, 1600 // scale, 3)
    png = cv2.imencode(".png", np.zeros((300, 400, 3), np.uint8))[1].tobytes()
    out = decode_reduced(png, ImageLimits(decode_min_side=50))
    assert (out.scale, out.width, out.height, out.pixels.shape) == (1, 400, 300, (300, 400, 3))
    assert decode_encoded(jpeg, ImageLimits(decode_min_side=200)).shape == (1200, 1600, 3)  # always full size


def test_decoded_width_and_height_are_the_upright_image():
    out = decode_reduced(_jpeg(64, 32))
    assert (out.scale, out.width, out.height) == (1, 64, 32)
    turned = decode_reduced(_jpeg(64, 32, orientation=6))  # EXIF 6: shown rotated 90 degrees clockwise
    assert (turned.width, turned.height, turned.pixels.shape) == (32, 64, (64, 32, 3))
    webp = decode_reduced(_encode("WEBP", np.zeros((30, 50, 3), np.uint8), quality=80))
    assert (webp.scale, webp.width, webp.height) == (1, 50, 30)
    pixels = np.zeros((7, 11, 3), np.uint8)
    made = Decoded.of(pixels)
    assert (made.scale, made.width, made.height) == (1, 11, 7) and made.pixels is pixels
    assert Decoded.of(made) is made


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_sixteen_bit_grey_from_pillow_is_scaled_not_clipped(mode):
    # 16-bit grey keeps its high byte: 0x1234 -> 0x12, 0xFF00 -> 0xFF
    values = np.array([[0x1234, 0xFF00, 0x00FF]], np.uint16)
    image = Image.fromarray(values.astype(np.int32), "I").convert(mode) if mode != "I" \
        else Image.fromarray(values.astype(np.int32), "I")
    assert image.mode == mode
    out = _decode_pillow(image, "HEIF", 10, ImageLimits())
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0x12, 0xFF, 0x00] and np.array_equal(out[..., 0], out[..., 2])


def test_the_raw_pixel_format_message_lists_the_formats():
    with pytest.raises(InvalidArgument) as info:
        decode_raw(4, 4, 0, 0, b"")
    assert str(info.value) == "raw image needs a pixel format (RGB8, BGR8, RGBA8, BGRA8 or GRAY8)"
