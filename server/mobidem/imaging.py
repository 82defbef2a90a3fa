"""Turning submitted bytes into an RGB image, with the limits that keep a bad frame from hurting.

Everything here raises :class:`InvalidImage` (a client error: INVALID_ARGUMENT) or
:class:`ImageTooLarge` (a limit: RESOURCE_EXHAUSTED) with a message that says what to fix.
Decoding is OpenCV's; nothing loops over pixels in Python.
"""

from __future__ import annotations

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
class ImageLimits:
    max_encoded_bytes: int = 16 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 40_000_000


def _check_dims(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image dimensions must be positive, got {width}x{height}")
    if width > limits.max_side or height > limits.max_side:
        raise ImageTooLarge(f"image is {width}x{height}; each side must be at most {limits.max_side} pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} are accepted"
        )


def _encoded_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header without decoding (None if not recognised)."""
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


def decode_encoded(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """JPEG/PNG/... bytes -> RGB uint8 [H, W, 3]."""
    if not data:
        raise InvalidImage("image is empty (0 bytes): send JPEG or PNG bytes, or a raw image")
    if len(data) > limits.max_encoded_bytes:
        raise ImageTooLarge(f"encoded image is {len(data)} bytes; at most {limits.max_encoded_bytes} are accepted")
    size = _encoded_size(data)
    if size is not None:  # refuse decompression bombs before allocating
        _check_dims(*size, limits)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidImage(f"image could not be decoded ({len(data)} bytes): send a complete JPEG or PNG file")
    _check_dims(bgr.shape[1], bgr.shape[0], limits)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


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
