"""Turning submitted bytes into an RGB image, with the limits that keep a bad frame from hurting.

Everything here raises :class:`InvalidImage` (a client error: INVALID_ARGUMENT) or
:class:`ImageTooLarge` (a limit: RESOURCE_EXHAUSTED) with a message that says what to fix.
Decoding is OpenCV's; nothing loops over pixels in Python.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from enum import IntEnum

import cv2
import numpy as np

from mobidem.errors import InvalidArgument, ResourceExhausted


class InvalidImage(InvalidArgument):
    pass


class ImageTooLarge(ResourceExhausted):
    pass


class PixelFormat(IntEnum):  # values match mobidem.v1.PixelFormat
    UNSPECIFIED = 0
    RGB8 = 1
    BGR8 = 2
    RGBA8 = 3
    BGRA8 = 4
    GRAY8 = 5


CHANNELS = {PixelFormat.RGB8: 3, PixelFormat.BGR8: 3, PixelFormat.RGBA8: 4, PixelFormat.BGRA8: 4, PixelFormat.GRAY8: 1}
TO_RGB = {
    PixelFormat.BGR8: cv2.COLOR_BGR2RGB,
    PixelFormat.RGBA8: cv2.COLOR_RGBA2RGB,
    PixelFormat.BGRA8: cv2.COLOR_BGRA2RGB,
    PixelFormat.GRAY8: cv2.COLOR_GRAY2RGB,
}


@dataclass(frozen=True)
class Decoded:
    """A decoded image, possibly at a reduced resolution: ``pixels`` [H, W, 3] RGB uint8 show the
    original ``width`` x ``height`` image (after EXIF orientation) at 1/``scale`` of its size."""

    pixels: np.ndarray
    scale: int = 1
    width: int = 0
    height: int = 0

    @classmethod
    def of(cls, pixels: np.ndarray) -> "Decoded":
        return pixels if isinstance(pixels, Decoded) else cls(pixels, 1, pixels.shape[1], pixels.shape[0])


@dataclass(frozen=True)
class ImageLimits:
    max_encoded_bytes: int = 16 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 50_000_000  # a 48-MP phone photo (8064x6048) fits
    # JPEGs are decoded at 1/2, 1/4 or 1/8 of their size (libjpeg's scaled decode, several times faster
    # and smaller) as far as they stay at least this large; 0: always full size
    decode_min_side: int = 0


def _check_dims(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image dimensions must be positive, got {width}x{height}")
    if width > limits.max_side or height > limits.max_side:
        raise ImageTooLarge(f"image is {width}x{height}; each side must be at most {limits.max_side} pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} are accepted"
        )


# The encoded formats accepted, each sniffed from its first bytes and size-checked from its header
# before a single pixel is decoded. Everything else (TIFF, BMP, GIF, ... which OpenCV would happily
# decode, allocating whatever their headers claim) is refused unread.
ACCEPTED_FORMATS = "JPEG, PNG, WebP or HEIC/HEIF"
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def sniff(data: bytes) -> str | None:
    """The container format of ``data`` from its magic bytes: JPEG, PNG, WEBP, HEIF, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def _encoded_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header without decoding (None if not recognised); these are
    what OpenCV's decoders will allocate."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + length
    return None


def webp_size(data: bytes) -> tuple[int, int]:
    """Width and height from a WebP file's first chunk (VP8, VP8L or VP8X), without libwebp: Pillow's
    opener builds libwebp's animation decoder, which allocates the whole canvas the header claims."""
    chunk = data[12:16]
    body = data[20:]
    if chunk == b"VP8X" and len(body) >= 10:
        return 1 + int.from_bytes(body[4:7], "little"), 1 + int.from_bytes(body[7:10], "little")
    if chunk == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(body[6:8], "little") & 0x3FFF, int.from_bytes(body[8:10], "little") & 0x3FFF
    raise InvalidImage(f"WebP image could not be decoded ({len(data)} bytes): its header is malformed; "
                       "send a complete file")


def heif_size(data: bytes) -> tuple[int, int]:
    """Width and height of a HEIF file's primary image from its container boxes, nothing decoded."""
    try:
        return tuple(_heif().open_heif(data, convert_hdr_to_8bit=True).size)
    except RuntimeError as exc:  # libheif's own limits (over 2^30 pixels) among others
        if "limit" in str(exc).lower():
            raise ImageTooLarge(f"HEIF image is too large: {exc}") from None
        raise InvalidImage(f"HEIF image could not be decoded ({len(data)} bytes: {exc}); send a complete file") from None
    except (ValueError, OSError) as exc:
        raise InvalidImage(f"HEIF image could not be decoded ({len(data)} bytes: {exc}); send a complete file") from None


def _heif():
    import pillow_heif

    pillow_heif.register_heif_opener()  # idempotent; HEIF then opens through Pillow like any format
    return pillow_heif


def warm_up() -> None:
    """Load the decoders now (at server start), not on a client's first HEIF or WebP."""
    from PIL import WebPImagePlugin  # noqa: F401

    _heif()


def _open(data: bytes, fmt: str):
    """A lazily opened Pillow image: the header is parsed, no pixel is decoded yet."""
    from PIL import Image, UnidentifiedImageError

    if fmt == "HEIF":
        _heif()
    try:
        return Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{fmt} image is too large: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"{fmt} image could not be decoded ({len(data)} bytes: {exc}); "
                           f"send a complete {ACCEPTED_FORMATS} file") from None


def decode_encoded(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """JPEG/PNG/WebP/HEIF bytes -> RGB uint8 [H, W, 3] at full size, EXIF orientation applied.

    The dimensions in the header are checked against ``limits`` before decoding, so a small file that
    claims a huge image costs nothing. JPEG and PNG decode with OpenCV (which applies their EXIF
    orientation and turns 16-bit PNG into 8-bit); WebP and HEIF with Pillow (pillow-heif), orientation
    applied with ``ImageOps.exif_transpose`` (HEIF's own rotation is applied by libheif). Alpha is
    dropped.
    """
    return decode_reduced(data, dataclasses.replace(limits, decode_min_side=0)).pixels


_REDUCED = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_COLOR_RGB,
            4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_COLOR_RGB, 8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_COLOR_RGB}


def decode_reduced(data: bytes, limits: ImageLimits = ImageLimits()) -> Decoded:
    """Like :func:`decode_encoded`, but a JPEG larger than twice ``limits.decode_min_side`` is decoded
    at 1/2, 1/4 or 1/8 scale (the largest that keeps its longer side >= decode_min_side): a 12-MP
    photo costs the decoder and every later step what a 3-MP one does. Other formats: full size."""
    if not data:
        raise InvalidImage(f"image is empty (0 bytes): send {ACCEPTED_FORMATS} bytes, or a raw image")
    if len(data) > limits.max_encoded_bytes:
        raise ImageTooLarge(f"encoded image is {len(data)} bytes; at most {limits.max_encoded_bytes} are accepted")
    fmt = sniff(data)
    if fmt is None:
        raise InvalidImage(f"image format not accepted ({len(data)} bytes, starting {data[:8].hex()}): "
                           f"send {ACCEPTED_FORMATS}, or a raw image")
    if fmt in ("WEBP", "HEIF"):
        # WebP before Pillow, whose opener allocates the canvas; HEIF from its container (libheif parses it)
        _check_dims(*(webp_size(data) if fmt == "WEBP" else heif_size(data)), limits)
        image = _open(data, fmt)
        _check_dims(*image.size, limits)
        return Decoded.of(_decode_pillow(image, fmt, len(data), limits))
    size = _encoded_size(data)
    if size is None:
        raise InvalidImage(f"{fmt} image could not be decoded ({len(data)} bytes): no image header found; "
                           "send a complete file")
    _check_dims(*size, limits)  # refuse decompression bombs before allocating
    scale = 1
    if fmt == "JPEG" and limits.decode_min_side:
        while scale < 8 and max(size) // (scale * 2) >= limits.decode_min_side:
            scale *= 2
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[scale])
    if rgb is None:
        raise InvalidImage(f"{fmt} image could not be decoded ({len(data)} bytes): send a complete file")
    width, height = size
    if (rgb.shape[1] > rgb.shape[0]) != (width > height):  # EXIF orientation turned it
        width, height = height, width
    _check_dims(width, height, limits)
    return Decoded(rgb, scale, width, height)


def _decode_pillow(image, fmt: str, nbytes: int, limits: ImageLimits) -> np.ndarray:
    from PIL import ImageOps

    try:
        image = ImageOps.exif_transpose(image)
        _check_dims(*image.size, limits)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale to 8 bits, not clip
            grey = np.asarray(image, np.uint32)
            return cv2.cvtColor((grey >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB)
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), np.uint8))
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"{fmt} image could not be decoded ({nbytes} bytes: {exc}); send a complete file") from None


def decode_raw(width: int, height: int, fmt: int, stride: int, data: bytes,
               limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Raw pixels -> RGB uint8 [H, W, 3]."""
    try:
        fmt = PixelFormat(fmt)
    except ValueError:
        fmt = PixelFormat.UNSPECIFIED
    if fmt == PixelFormat.UNSPECIFIED:
        raise InvalidImage("raw image needs a pixel format (RGB8, BGR8, RGBA8, BGRA8 or GRAY8)")
    _check_dims(width, height, limits)
    channels = CHANNELS[fmt]
    row = width * channels
    stride = stride or row
    if stride < row:
        raise InvalidImage(f"raw image stride {stride} is smaller than width x channels = {row}")
    expected_min, expected_full = stride * (height - 1) + row, stride * height
    if len(data) not in (expected_min, expected_full):
        raise InvalidImage(
            f"raw {fmt.name} image of {width}x{height} with stride {stride} needs {expected_full} bytes, "
            f"got {len(data)}"
        )
    buf = np.frombuffer(data, np.uint8)
    if len(data) == expected_min and expected_min != expected_full:
        buf = np.concatenate([buf, np.zeros(expected_full - expected_min, np.uint8)])
    pixels = buf.reshape(height, stride)[:, :row].reshape(height, width, channels)
    if fmt == PixelFormat.RGB8:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), TO_RGB[fmt])
