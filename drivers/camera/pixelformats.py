"""GenICam (PFNC) pixel formats to numpy images: pure numpy/OpenCV, no camera needed.

`to_array(raw, width_px=..., height_px=..., pixel_format=...)` turns one raw
image buffer into what a `Frame` carries:

| PFNC name                          | result                                       |
| ---------------------------------- | -------------------------------------------- |
| Mono8                              | HxW uint8                                    |
| Mono10, Mono12, Mono16             | HxW uint16, little-endian words, raw values  |
|                                    | (0..1023, 0..4095, 0..65535: not rescaled)   |
| Mono10p, Mono12p                   | HxW uint16, unpacked from the PFNC LSB-first |
|                                    | bit stream                                   |
| RGB8, BGR8, RGBa8, BGRa8           | HxWx3 uint8 in RGB order (alpha dropped)     |
| BayerRG8, BayerGR8, BayerBG8,      | HxWx3 uint8 RGB, demosaiced by OpenCV        |
| BayerGB8                           |                                              |

Where no arithmetic is needed (Mono8/10/12/16, RGB8, BGR8, RGBa8, BGRa8) the
result is a *view* of `raw`: it shares the camera buffer's memory and is only
valid while that buffer is held (copy it, e.g. with `Frame.detach()`, to keep
it). Packed and Bayer formats produce a new array.

Bayer naming: GenICam names the 2x2 tile by its first row from the top-left
pixel (BayerRG8 = R G / G B), OpenCV by the second row, second and third
columns, so GenICam's RG is OpenCV's BG, GR is GB, BG is RG and GB is GR.
`BAYER_TO_CV2` holds that mapping; the tests check every pattern with flat
colour patches.
"""

from __future__ import annotations

import dataclasses
import sys

import cv2
import numpy as np

from drivers.errors import CameraError

# GenICam pattern (first row from the top-left pixel) -> OpenCV conversion code.
# OpenCV names a pattern by the second row's second and third pixels, which is
# the GenICam pattern with both axes shifted by one.
BAYER_TO_CV2: dict[str, int] = {
    "BayerRG8": cv2.COLOR_BayerBG2RGB,
    "BayerGR8": cv2.COLOR_BayerGB2RGB,
    "BayerBG8": cv2.COLOR_BayerRG2RGB,
    "BayerGB8": cv2.COLOR_BayerGR2RGB,
}


@dataclasses.dataclass(frozen=True)
class PixelFormatInfo:
    """How one PFNC pixel format is laid out in a buffer."""

    name: str
    bits_per_pixel: int
    kind: str  # "mono", "mono_packed", "rgb", "bgr", "rgba", "bgra", "bayer"
    channels_out: int
    dtype_out: type[np.generic]


PIXEL_FORMATS: dict[str, PixelFormatInfo] = {
    info.name: info
    for info in (
        PixelFormatInfo("Mono8", 8, "mono", 1, np.uint8),
        PixelFormatInfo("Mono10", 16, "mono", 1, np.uint16),
        PixelFormatInfo("Mono12", 16, "mono", 1, np.uint16),
        PixelFormatInfo("Mono16", 16, "mono", 1, np.uint16),
        PixelFormatInfo("Mono10p", 10, "mono_packed", 1, np.uint16),
        PixelFormatInfo("Mono12p", 12, "mono_packed", 1, np.uint16),
        PixelFormatInfo("RGB8", 24, "rgb", 3, np.uint8),
        PixelFormatInfo("BGR8", 24, "bgr", 3, np.uint8),
        PixelFormatInfo("RGBa8", 32, "rgba", 3, np.uint8),
        PixelFormatInfo("BGRa8", 32, "bgra", 3, np.uint8),
        PixelFormatInfo("BayerRG8", 8, "bayer", 3, np.uint8),
        PixelFormatInfo("BayerGR8", 8, "bayer", 3, np.uint8),
        PixelFormatInfo("BayerBG8", 8, "bayer", 3, np.uint8),
        PixelFormatInfo("BayerGB8", 8, "bayer", 3, np.uint8),
    )
}

SUPPORTED_PIXEL_FORMATS: tuple[str, ...] = tuple(PIXEL_FORMATS)

# PFNC packed words are little-endian; on a big-endian host the 16-bit view
# must be byte-swapped (a copy) rather than reinterpreted.
_LITTLE_ENDIAN = sys.byteorder == "little"


def format_info(pixel_format: str) -> PixelFormatInfo:
    """The layout of `pixel_format`; CameraError naming the supported ones if unknown."""
    info = PIXEL_FORMATS.get(pixel_format)
    if info is None:
        raise CameraError(
            f"pixel format {pixel_format!r} is not supported; "
            f"set the camera to one of: {', '.join(SUPPORTED_PIXEL_FORMATS)}"
        )
    return info


def frame_size_bytes(*, width_px: int, height_px: int, pixel_format: str) -> int:
    """Bytes one tightly packed frame of this size and format occupies."""
    info = format_info(pixel_format)
    return (width_px * height_px * info.bits_per_pixel + 7) // 8


def _as_bytes(raw: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A flat uint8 view of `raw` without copying."""
    if isinstance(raw, np.ndarray):
        if not raw.flags.c_contiguous:
            raise ValueError("raw pixel buffer must be C-contiguous")
        return raw.reshape(-1).view(np.uint8)
    return np.frombuffer(raw, dtype=np.uint8)


def _unpack_mono10p(data: np.ndarray, count: int) -> np.ndarray:
    """PFNC Mono10p: 4 pixels in 5 bytes, bits filled from the least significant end."""
    groups = (count + 3) // 4
    padded = np.zeros(groups * 5, dtype=np.uint8)
    n = min(data.size, padded.size)
    padded[:n] = data[:n]
    b = padded.reshape(groups, 5).astype(np.uint16)
    out = np.empty((groups, 4), dtype=np.uint16)
    out[:, 0] = b[:, 0] | ((b[:, 1] & 0x03) << 8)
    out[:, 1] = (b[:, 1] >> 2) | ((b[:, 2] & 0x0F) << 6)
    out[:, 2] = (b[:, 2] >> 4) | ((b[:, 3] & 0x3F) << 4)
    out[:, 3] = (b[:, 3] >> 6) | (b[:, 4] << 2)
    return out.reshape(-1)[:count]


def _unpack_mono12p(data: np.ndarray, count: int) -> np.ndarray:
    """PFNC Mono12p: 2 pixels in 3 bytes, bits filled from the least significant end."""
    groups = (count + 1) // 2
    padded = np.zeros(groups * 3, dtype=np.uint8)
    n = min(data.size, padded.size)
    padded[:n] = data[:n]
    b = padded.reshape(groups, 3).astype(np.uint16)
    out = np.empty((groups, 2), dtype=np.uint16)
    out[:, 0] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
    out[:, 1] = (b[:, 1] >> 4) | (b[:, 2] << 4)
    return out.reshape(-1)[:count]


def to_array(
    raw: bytes | bytearray | memoryview | np.ndarray,
    *,
    width_px: int,
    height_px: int,
    pixel_format: str,
    stride_bytes: int | None = None,
) -> np.ndarray:
    """Convert one raw image buffer to HxW (mono) or HxWx3 RGB pixels.

    `stride_bytes` is the distance between line starts when the producer pads
    lines (GenTL's padding_x added to the packed line length); None means
    lines are tightly packed. Extra bytes after the image are ignored. Raises
    CameraError for an unsupported format or a buffer too short for the size.
    """
    info = format_info(pixel_format)
    if width_px <= 0 or height_px <= 0:
        raise CameraError(f"image size {width_px}x{height_px} px is empty ({pixel_format})")
    data = _as_bytes(raw)

    if info.kind == "mono_packed":
        line_bits = width_px * info.bits_per_pixel
        if stride_bytes is not None and line_bits % 8 == 0 and stride_bytes != line_bits // 8:
            # Padded lines: decode each line's own bit stream.
            line_bytes = line_bits // 8
            needed = stride_bytes * (height_px - 1) + line_bytes
            if data.size < needed:
                raise CameraError(
                    f"{pixel_format} buffer holds {data.size} bytes, {width_px}x{height_px} px "
                    f"with a {stride_bytes}-byte stride needs {needed}"
                )
            lines = np.lib.stride_tricks.as_strided(
                data, shape=(height_px, line_bytes), strides=(stride_bytes, 1), writeable=False
            )
            unpack = _unpack_mono10p if info.bits_per_pixel == 10 else _unpack_mono12p
            return np.stack([unpack(line, width_px) for line in lines])
        count = width_px * height_px
        needed = (count * info.bits_per_pixel + 7) // 8
        if data.size < needed:
            raise CameraError(
                f"{pixel_format} buffer holds {data.size} bytes, {width_px}x{height_px} px needs {needed}"
            )
        unpack = _unpack_mono10p if info.bits_per_pixel == 10 else _unpack_mono12p
        return unpack(data[:needed], count).reshape(height_px, width_px)

    line_bytes = width_px * info.bits_per_pixel // 8
    stride = line_bytes if stride_bytes is None else stride_bytes
    if stride < line_bytes:
        raise CameraError(f"line stride {stride} bytes is shorter than a {pixel_format} line ({line_bytes})")
    needed = stride * (height_px - 1) + line_bytes
    if data.size < needed:
        raise CameraError(
            f"{pixel_format} buffer holds {data.size} bytes, {width_px}x{height_px} px needs {needed}"
        )
    if stride == line_bytes:
        lines = data[: height_px * line_bytes].reshape(height_px, line_bytes)
    else:
        lines = np.lib.stride_tricks.as_strided(
            data, shape=(height_px, line_bytes), strides=(stride, 1), writeable=False
        )

    if info.kind == "mono":
        if info.bits_per_pixel == 8:
            return lines
        words = lines.view("<u2")
        return words if _LITTLE_ENDIAN else words.astype(np.uint16)
    if info.kind == "rgb":
        return lines.reshape(height_px, width_px, 3)
    if info.kind == "bgr":
        return lines.reshape(height_px, width_px, 3)[..., ::-1]
    if info.kind == "rgba":
        return lines.reshape(height_px, width_px, 4)[..., :3]
    if info.kind == "bgra":
        return lines.reshape(height_px, width_px, 4)[..., 2::-1]
    # Bayer: OpenCV needs a contiguous single-channel image.
    mosaic = np.ascontiguousarray(lines)
    return cv2.cvtColor(mosaic, BAYER_TO_CV2[info.name])


def bayer_mosaic(rgb: np.ndarray, *, pattern: str) -> np.ndarray:
    """Sample an HxWx3 RGB image through a Bayer filter (`pattern` as in GenICam:
    "RG", "GR", "BG" or "GB"): the inverse of demosaicing, for tests and simulators."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB, got shape {rgb.shape}")
    if pattern not in ("RG", "GR", "BG", "GB"):
        raise ValueError(f"Bayer pattern must be RG, GR, BG or GB, got {pattern!r}")
    channel = {"R": 0, "G": 1, "B": 2}
    # The 2x2 tile: first row is the pattern, second row its complement.
    second = {"RG": "GB", "GR": "BG", "BG": "GR", "GB": "RG"}[pattern]
    tile = (pattern, second)
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            c = channel[tile[dy][dx]]
            out[dy::2, dx::2] = rgb[dy::2, dx::2, c]
    return out
