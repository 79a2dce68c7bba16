"""Procedural scenes for smoke tests and the demo: a segmentation task that colour alone cannot solve.

A scene is a warped Voronoi partition; each cell takes a random class. Classes come in pairs
(2j, 2j+1) that draw their colour from the same distribution (a pair hue, per-region jitter,
per-pixel noise) and the same two brightness levels in equal shares, so a per-pixel colour
classifier is at chance inside a pair. The pair members differ only in texture: stripes at the
pair's angle versus a checkerboard (even pairs) or stripes at the orthogonal angle (odd pairs).
An odd last class has a colour of its own and a binary-noise texture. The class look (colours, textures) is
fixed by `num_classes` (and `scenes`) alone, so train and val share it whatever the seeds; a scene's
layout depends on (seed, split, index) only.

`scenes="modes"` gives every class three appearance modes, one drawn per region: the mode sets the
colour (the pair's hue shifted by -30, 0 or +30 degrees, at three brightness levels), the texture
period (6, 8 or 10 px) and its orientation (0, 60 or 120 degrees). Pair members share all three mode
by mode and differ only in the kind of texture (stripes versus a checkerboard), so each class is
three clusters of appearance, neighbouring pairs' colours overlap, and the pair members are
confusable: large intra-class variation, what the CAC loss targets (docs/study.md).
"""

from __future__ import annotations

import colorsys

import numpy as np

from csfr.data.base import SegmentationDataset, make_palette

_STREAM = 0x5CE7E  # keeps scene generators apart from the augmentation streams [seed, epoch, index]
_SPLIT_IDS = {"train": 1, "val": 2}
_DEFAULT_LENGTH = {"train": 2000, "val": 200}
STRIPES, CHECKER, NOISE = 0, 1, 2
SCENES = ("pairs", "modes")
_MODE_PERIODS = (6.0, 8.0, 10.0)  # stripe periods (px) of the three modes, rotated per pair


class SyntheticScenes(SegmentationDataset):
    """`num_classes` textured classes on `size` (int or (H, W)) images; `length` items per split
    (default 2000 train / 200 val); `scenes` "pairs" (one look per class) or "modes" (three looks
    per class, see the module docstring). `root` is accepted for `build_dataset` and ignored."""

    name = "synthetic"
    splits = ("train", "val")

    def __init__(self, split: str = "train", num_classes: int = 8, size: int | tuple[int, int] = 128,
                 length: int | None = None, seed: int = 0, transform=None, root=None, scenes: str = "pairs"):
        super().__init__(split, transform, seed)
        if num_classes < 2:
            raise ValueError(f"synthetic: num_classes must be >= 2, got {num_classes}")
        if scenes not in SCENES:
            raise ValueError(f"synthetic: unknown scenes {scenes!r}; valid: {', '.join(SCENES)}")
        self.scenes = scenes
        self.num_classes = num_classes
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.length = _DEFAULT_LENGTH[split] if length is None else int(length)
        self.palette = make_palette(num_classes)
        pairs, member = np.arange(num_classes) // 2, np.arange(num_classes) % 2
        n_pairs = (num_classes + 1) // 2
        hues = (pairs * 0.618034) % 1.0  # golden-ratio spacing keeps pair hues apart
        self._colour = np.array([colorsys.hsv_to_rgb(h, 0.55, 0.8) for h in hues], np.float32) * 255
        self._texture = np.where((member == 1) & (pairs % 2 == 0), CHECKER, STRIPES)
        self._angle = (pairs * np.pi / n_pairs + np.where((member == 1) & (pairs % 2 == 1), np.pi / 2, 0)
                       ).astype(np.float32)
        self._freq = (2 * np.pi / (6.0 + 2.0 * (pairs % 3))).astype(np.float32)  # periods 6, 8, 10 px
        if num_classes % 2:
            self._texture[-1] = NOISE
        if scenes == "modes":
            self._modes_look(pairs, member)
        else:  # one mode per class: [K, 1] tables
            self._colour, self._texture = self._colour[:, None], self._texture[:, None]
            self._angle, self._freq = self._angle[:, None], self._freq[:, None]
        self.class_names = tuple(
            f"pair{p}_" + {CHECKER: "checker", NOISE: "noise"}.get(
                t[0], "stripes" + "-".join(str(round(np.degrees(x)) % 180) for x in a))
            for p, t, a in zip(pairs, self._texture, self._angle))

    def _modes_look(self, pairs: np.ndarray, member: np.ndarray) -> None:
        """[K, 3] look tables of the "modes" scenes: per (class, mode) a colour, period, angle and texture."""
        modes = np.arange(len(_MODE_PERIODS))
        hues = (pairs[:, None] * 0.618034 + (modes - 1) / 12) % 1.0
        values = np.array([0.8, 0.7, 0.9])[modes]
        self._colour = np.array([[colorsys.hsv_to_rgb(h, 0.55, v) for h, v in zip(row, values)] for row in hues],
                                np.float32) * 255
        self._freq = (2 * np.pi / np.array(_MODE_PERIODS, np.float32)[(pairs[:, None] + modes) % 3]).astype(np.float32)
        self._angle = np.radians(60.0 * modes + 0.0 * member[:, None]).astype(np.float32)
        kind = np.where(member == 1, CHECKER, STRIPES)
        self._texture = np.where(self._texture == NOISE, NOISE, kind)[:, None].repeat(len(modes), 1)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image HxWx3 uint8, label HxW int64) of scene `index`, a pure function of seed, split, index."""
        rng = np.random.Generator(np.random.PCG64([self.seed, _STREAM, _SPLIT_IDS[self.split], index]))
        h, w = self.size
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        # Regions: Voronoi cells of 3..8 seeds in sinusoidally warped coordinates (blob-like borders).
        n = int(rng.integers(3, 9))
        amp, wavelength, phase = (rng.uniform(lo, hi, 2).astype(np.float32) for lo, hi in
                                  ((2, 8), (24, 64), (0, 2 * np.pi)))
        wx = x + amp[0] * np.sin(2 * np.pi * y / wavelength[0] + phase[0])
        wy = y + amp[1] * np.sin(2 * np.pi * x / wavelength[1] + phase[1])
        centres = (rng.uniform(0, 1, (n, 2)) * (h, w)).astype(np.float32)
        region = ((wy[None] - centres[:, 0, None, None]) ** 2 + (wx[None] - centres[:, 1, None, None]) ** 2
                  ).argmin(0)
        classes = rng.integers(0, self.num_classes, n)
        label = classes[region]
        # Texture: binary pattern (equal shares of 0 and 1) with a random phase per region.
        offset = rng.uniform(0, 2 * np.pi, (2, n)).astype(np.float32)[:, region]
        # the region's appearance mode (always 0 for "pairs", whose stream draws nothing for it)
        mode = (rng.integers(0, self._angle.shape[1], n) if self._angle.shape[1] > 1 else np.zeros(n, int))[region]
        look = (label, mode)
        freq, angle, texture = self._freq[look], self._angle[look], self._texture[look]
        u, v = x * np.cos(angle) + y * np.sin(angle), y * np.cos(angle) - x * np.sin(angle)
        stripes = np.sin(u * freq + offset[0]) > 0
        if self.scenes == "pairs":  # the original scenes' checkerboards are axis-aligned
            u, v = y, x
        checker = np.sin(v * freq + offset[0]) * np.sin(u * freq + offset[1]) > 0
        pattern = np.where(texture == CHECKER, checker, stripes)
        noise = texture == NOISE
        pattern[noise] = rng.integers(0, 2, int(noise.sum()), dtype=bool)
        # Colour: the pair's colour, jittered per region, two brightness levels, per-pixel noise.
        colour = self._colour[look] + rng.normal(0, 12, (n, 3)).astype(np.float32)[region]
        image = colour * (0.6 + 0.4 * pattern.astype(np.float32))[..., None]
        image += rng.standard_normal((h, w, 3), np.float32) * 6
        return np.clip(image, 0, 255).astype(np.uint8), label.astype(np.int64)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        image, label = self.scene(index)
        meta = {"image_path": None, "label_path": None, "index": index, "dataset": self.name,
                "split": self.split}
        return image, label, meta
