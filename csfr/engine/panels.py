"""Pictures of predictions a person can check: palette label PNGs, overlays, and panels
(input | ground truth | prediction | errors, with a legend of the classes present).

Labels are HxW integer train ids. In a panel, `ignore_index` pixels of the ground truth are hatched
(light grey stripes) in the ground-truth and error tiles; the error tile shows the image in dimmed
greyscale with the wrong pixels red. Everything is drawn with Pillow and its default font.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from csfr.ops.layout import IGNORE_INDEX

IGNORE_COLOUR = (0, 0, 0)
WRONG_COLOUR = (255, 32, 32)
IGNORED_IN_ERRORS = (150, 150, 150)
OVERLAY_ALPHA = 0.6      # share of the class colour in an overlay
TILE_MIN, TILE_MAX = 256, 768  # a panel tile's short side is raised to TILE_MIN, its long side kept <= TILE_MAX
_BACKGROUND, _TEXT = (255, 255, 255), (20, 20, 20)


def colorize(label: np.ndarray, palette: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """HxWx3 uint8 colours of a label map; ignore_index (and any value without a colour) is black."""
    table = np.zeros((max(256, int(label.max(initial=0)) + 1), 3), np.uint8)
    table[:len(palette)] = palette
    table[ignore_index] = IGNORE_COLOUR
    return table[label]


def label_png(label: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A palette ("P") PNG image: pixel values are the class ids, viewers show the class colours.
    More than 256 classes do not fit a palette PNG: the ids are then stored as 16-bit greyscale."""
    if len(palette) > 256:
        return Image.fromarray(label.astype(np.uint16))
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
    return image


def _grey(image: np.ndarray) -> np.ndarray:
    """HxW float32 luminance of an RGB image."""
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The class colours blended over the image in greyscale (alpha = share of the colour), so the
    only colours are the classes'; class borders are drawn in white."""
    mixed = (1 - alpha) * _grey(image)[..., None] + alpha * colorize(label, palette).astype(np.float32)
    border = np.zeros(label.shape, bool)
    border[:-1] |= label[:-1] != label[1:]
    border[:, :-1] |= label[:, :-1] != label[:, 1:]
    mixed[border] = 255
    return mixed.round().astype(np.uint8)


def error_map(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Wrong pixels red, ignored pixels flat grey, correct pixels the image in dimmed greyscale."""
    out = np.repeat((60 + 0.35 * _grey(image))[..., None], 3, axis=2).astype(np.uint8)
    out[(pred != truth) & (truth != ignore_index)] = WRONG_COLOUR
    out[truth == ignore_index] = IGNORED_IN_ERRORS
    return out


def _hatch(colours: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Diagonal light-grey stripes on the pixels of `mask` (ignored ground truth)."""
    y, x = np.indices(mask.shape)
    stripes = np.where(((x + y) // 4) % 2 == 0, 235, 170).astype(np.uint8)
    colours[mask] = stripes[mask][:, None]
    return colours


def _tile_scale(height: int, width: int) -> float:
    """Factor that brings an image into the tile size range (small images are enlarged)."""
    scale = max(1.0, TILE_MIN / min(height, width))
    return min(scale, TILE_MAX / max(height, width)) if max(height, width) * scale > TILE_MAX else scale


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """An image or label map at (width, height): labels (and enlarged images) NEAREST, else BILINEAR."""
    if array.shape[1::-1] == size:
        return array
    if array.ndim == 2:
        return np.asarray(Image.fromarray(array.astype(np.int32)).resize(size, Image.NEAREST)).astype(array.dtype)
    return np.asarray(Image.fromarray(array).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _legend(entries: Sequence[tuple[tuple[int, int, int] | None, str]], width: int,
            font: ImageFont.ImageFont) -> Image.Image:
    """Rows of colour swatches with their text, wrapped to `width`; colour None = hatched (ignored)."""
    line, swatch, gap = font.size + 8, font.size, font.size
    x, y, placed = 8, 0, []
    for colour, text in entries:
        item = swatch + 6 + int(font.getlength(text)) + gap
        if x + item > width and x > 8:
            x, y = 8, y + line
        placed.append((x, y, colour, text))
        x += item
    canvas = Image.new("RGB", (width, y + line + 4), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for x, y, colour, text in placed:
        box = (x, y + 4, x + swatch, y + 4 + swatch)
        if colour is None:
            hatch = _hatch(np.zeros((swatch, swatch, 3), np.uint8), np.ones((swatch, swatch), bool))
            canvas.paste(Image.fromarray(hatch), box[:2])
            draw.rectangle(box, outline=(90, 90, 90))
        else:
            draw.rectangle(box, fill=colour, outline=(90, 90, 90))
        draw.text((x + swatch + 6, y + 4), text, fill=_TEXT, font=font)
    return canvas


def panel(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, class_names: Sequence[str],
          truth: np.ndarray | None = None, ignore_index: int = IGNORE_INDEX) -> Image.Image:
    """input | ground truth | prediction | errors (the last two only with `truth`), titled, with a
    legend of the classes in the prediction and the ground truth.

    Args:
        image: HxWx3 uint8 input at the labels' size.
        pred: HxW predicted train ids.
        palette: Kx3 uint8 class colours; class_names: K names.
        truth: HxW ground-truth train ids (ignore_index = not scored, drawn hatched), or None;
            one without a labelled pixel (a test split) is left out like None.
    Returns:
        The panel as an RGB Pillow image (tiles scaled to a short side >= 256 px where possible
        and a long side <= 768 px; 2x2 for wide images with ground truth).
    """
    h, w = pred.shape
    if image.shape[:2] != (h, w) or (truth is not None and truth.shape != (h, w)):
        raise ValueError(f"panel: image {image.shape[:2]}, prediction {pred.shape} and ground truth "
                         f"{None if truth is None else truth.shape} must share one size")
    if truth is not None and not (truth != ignore_index).any():
        truth = None
    scale = _tile_scale(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    shown = _resize(image, size, nearest=scale > 1)
    shown_pred = _resize(pred, size, nearest=True)
    tiles = [("input", shown)]
    legend_extra = []
    if truth is not None:
        shown_truth = _resize(truth, size, nearest=True)
        ignored = shown_truth == ignore_index
        tiles.append(("ground truth", _hatch(colorize(shown_truth, palette, ignore_index), ignored)))
    tiles.append(("prediction", colorize(shown_pred, palette, ignore_index)))
    if truth is not None:
        scored = truth != ignore_index
        wrong = 100 * ((pred != truth) & scored).sum() / scored.sum()
        tiles.append((f"errors: {wrong:.1f}% of labelled pixels",
                      _hatch(error_map(shown, shown_pred, shown_truth, ignore_index), ignored)))
        legend_extra = [(WRONG_COLOUR, "wrong")] + ([(None, "ignored (not scored)")] if ignored.any() else [])
    tw, th = size
    columns = 2 if len(tiles) == 4 and w >= 1.5 * h else len(tiles)
    rows = -(-len(tiles) // columns)
    font = _font(max(12, min(22, th // 16)))
    title_h, pad = font.size + 10, 6
    width = columns * tw + (columns + 1) * pad
    present = np.union1d(np.unique(pred), np.unique(truth) if truth is not None else [])
    entries = [(tuple(int(c) for c in palette[k]), f"{k} {class_names[k]}") for k in present.astype(int)
               if k < len(class_names)]
    legend = _legend(entries + legend_extra, width, font)
    canvas = Image.new("RGB", (width, rows * (th + title_h + pad) + pad + legend.height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (title, array) in enumerate(tiles):
        x = pad + (i % columns) * (tw + pad)
        y = pad + (i // columns) * (th + title_h + pad)
        draw.text((x, y + 2), title, fill=_TEXT, font=font)
        canvas.paste(Image.fromarray(array), (x, y + title_h))
    canvas.paste(legend, (0, rows * (th + title_h + pad) + pad))
    return canvas
