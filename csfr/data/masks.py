"""Binary masks from COCO-style segmentations (compressed or plain RLE, polygons), without pycocotools.

RLE runs alternate background / foreground, starting with background, over the pixels in
column-major order; the compressed string stores each run as 5-bit groups (ASCII offset 48),
runs after the second as differences from the run two before (pycocotools' rleFrString).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def rle_string_counts(text: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError(f"truncated RLE string {text[:40]!r}")
            c = ord(text[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_decode(counts: list[int], height: int, width: int) -> np.ndarray:
    """HxW bool mask of run lengths `counts` (column-major, background first)."""
    counts = np.asarray(counts, np.int64)
    if (counts < 0).any() or counts.sum() != height * width:
        raise ValueError(f"RLE runs sum to {counts.sum()} (or are negative), expected {height}x{width} pixels")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape(width, height).T


def polygon_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """HxW bool mask of the union of polygons [x1, y1, x2, y2, ...] (pixel coordinates)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([float(v) for v in poly], fill=1, outline=1)
    return np.asarray(canvas, bool)


def segmentation_mask(segmentation: dict | list, height: int, width: int) -> np.ndarray:
    """HxW bool mask of one annotation's `segmentation` field (RLE dict or polygon list)."""
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, height, width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError(f"unknown segmentation format: {str(segmentation)[:80]}")
    size = segmentation.get("size", [height, width])
    if list(size) != [height, width]:
        raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return rle_decode(rle_string_counts(counts) if isinstance(counts, str) else counts, height, width)
