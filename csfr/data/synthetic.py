"""Procedural scenes for smoke tests and the demo: a segmentation task that colour alone cannot solve.

A scene is a warped Voronoi partition; each cell takes a random class. Classes come in pairs
(2j, 2j+1) that draw their colour from the same distribution (a pair hue, per-region jitter,
per-pixel noise) and the same two brightness levels in equal shares, so a per-pixel colour
classifier is at chance inside a pair. The pair members differ only in the kind of texture:
stripes (member 0) versus a checkerboard (member 1). An odd last class has a colour of its own
and a binary-noise texture. The class look (colours, textures) is fixed by `num_classes` (and
`scenes`) alone, so train and val share it whatever the seeds; a scene's layout depends on
(seed, split, index) only.

Every cue survives the training pipeline (flip, rescale, crop, photometric distortion): pair hues
are evenly spaced around the hue circle, and the textures are flip-symmetric: even pairs have
horizontal stripes and an axis-aligned checkerboard, odd pairs vertical stripes and a diagonal
(45-degree) checkerboard, so hue-neighbouring pairs also differ in texture and a hue jitter cannot
swap them. Periods are nuisances (rescaling changes them). An earlier version gave odd pairs
stripes at 45 and 135 degrees, which a horizontal flip swaps: four of eight classes got the wrong
label on their only cue half of the time (docs/study.md, "Scenes v1").

`scenes="modes"` gives every class three appearance modes, one drawn per region: the mode sets the
colour (the pair's hue shifted by -30, 0 or +30 degrees, at three brightness levels) and the
texture period (6, 8 or 10 px, rotated per pair). Pair members share all of it mode by mode and
differ only in the kind of texture, so each class is three clusters of appearance, neighbouring
pairs' colours come close, and the pair members are confusable: large intra-class variation,
what the CAC loss targets (docs/study.md).

`scenes="families"` is the proxy study's task (docs/study.md, "The fair test"): classes come in
families of four that share a hue and differ only in texture (horizontal or vertical stripes, an
axis-aligned or diagonal checkerboard), each class with three appearance modes (hue +-12 degrees,
brightness, period 6/8/10 px). An image holds 2-4 classes over 6-10 regions, so one class often
shows several modes in one image, and classes are drawn with long-tailed frequencies (the k-th
most frequent twice as likely as the 2k-th). `look_seed` picks the look: look 1 puts the
families' hues halfway between look 0's and ranks the classes' frequencies in another order, a
disjoint label set to pretrain a backbone on. With five families 72 degrees apart, a photometric
hue shift (up to 36 degrees) can swap neighbouring families: their presets train without it.
"""

from __future__ import annotations

import colorsys

import numpy as np

from csfr.data.base import SegmentationDataset, make_palette

_STREAM = 0x5CE7E  # keeps scene generators apart from the augmentation streams [seed, epoch, index]
_SPLIT_IDS = {"train": 1, "val": 2}
_DEFAULT_LENGTH = {"train": 2000, "val": 200}
STRIPES, CHECKER, NOISE = 0, 1, 2
SCENES = ("pairs", "modes", "families")
_MODE_PERIODS = (6.0, 8.0, 10.0)  # stripe periods (px) of the three modes, rotated per pair
# the four textures of a family: (kind, orientation in degrees), all flip-symmetric
_FAMILY_TEXTURES = ((STRIPES, 0), (STRIPES, 90), (CHECKER, 0), (CHECKER, 45))


def _mode_tables(hues: np.ndarray, hue_step: float, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, 3, 3] colours and [K, 3] stripe frequencies of three appearance modes per class: mode m
    shifts the class hue by (m - 1) * hue_step at brightness 0.8, 0.7 or 0.9, and takes the period
    _MODE_PERIODS[(rotation + m) % 3]."""
    modes, values = np.arange(len(_MODE_PERIODS)), (0.8, 0.7, 0.9)
    colour = np.array([[colorsys.hsv_to_rgb((h + (m - 1) * hue_step) % 1.0, 0.55, values[m]) for m in modes]
                       for h in hues], np.float32) * 255
    periods = np.array(_MODE_PERIODS, np.float32)[(rotation[:, None] + modes) % len(_MODE_PERIODS)]
    return colour, (2 * np.pi / periods).astype(np.float32)


class SyntheticScenes(SegmentationDataset):
    """`num_classes` textured classes on `size` (int or (H, W)) images; `length` items per split
    (default 2000 train / 200 val); `scenes` "pairs" (one look per class), "modes" (three looks
    per class) or "families" (the proxy study's task, with `look_seed`), see the module docstring.
    `root` is accepted for `build_dataset` and ignored."""

    name = "synthetic"
    splits = ("train", "val")

    def __init__(self, split: str = "train", num_classes: int = 8, size: int | tuple[int, int] = 128,
                 length: int | None = None, seed: int = 0, transform=None, root=None, scenes: str = "pairs",
                 look_seed: int = 0):
        super().__init__(split, transform, seed)
        if num_classes < 2:
            raise ValueError(f"synthetic: num_classes must be >= 2, got {num_classes}")
        if scenes not in SCENES:
            raise ValueError(f"synthetic: unknown scenes {scenes!r}; valid: {', '.join(SCENES)}")
        if look_seed and scenes != "families":
            raise ValueError(f"synthetic: look_seed applies to scenes='families' only, got {look_seed} with {scenes!r}")
        self.scenes = scenes
        self.num_classes = num_classes
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.length = _DEFAULT_LENGTH[split] if length is None else int(length)
        self.palette = make_palette(num_classes)
        pairs, member = np.arange(num_classes) // 2, np.arange(num_classes) % 2
        n_pairs = (num_classes + 1) // 2
        hues = pairs / n_pairs  # evenly spaced: the widest margin against a photometric hue shift
        self._colour = np.array([colorsys.hsv_to_rgb(h, 0.55, 0.8) for h in hues], np.float32) * 255
        self._texture = np.where(member == 1, CHECKER, STRIPES)
        # flip-symmetric orientations: stripes horizontal (even pairs) or vertical (odd pairs), the
        # checkerboard axis-aligned or diagonal, so that hue-neighbouring pairs differ in texture too
        self._angle = np.radians(np.array([[0, 0], [90, 45]])[pairs % 2, member]).astype(np.float32)
        self._freq = (2 * np.pi / (6.0 + 2.0 * (pairs % 3))).astype(np.float32)  # periods 6, 8, 10 px
        if num_classes % 2:
            self._texture[-1] = NOISE
        if scenes == "families":
            self._families_look(look_seed)
            return
        if scenes == "modes":
            self._modes_look(hues)
        else:  # one mode per class: [K, 1] tables
            self._colour, self._texture = self._colour[:, None], self._texture[:, None]
            self._angle, self._freq = self._angle[:, None], self._freq[:, None]
        self.class_names = tuple(
            f"pair{p}_" + {CHECKER: "checker" + ("45" if p % 2 else "0"), NOISE: "noise"}.get(
                t, "stripes" + ("90" if p % 2 else "0"))
            for p, t in zip(pairs, self._texture[:, 0]))

    def _modes_look(self, hues: np.ndarray) -> None:
        """[K, 3] look tables of the "modes" scenes: per (class, mode) a colour and a period; the
        texture kind and orientation stay the class's own."""
        self._colour, self._freq = _mode_tables(hues, 1 / 12, np.arange(self.num_classes) // 2)
        self._angle = self._angle[:, None].repeat(len(_MODE_PERIODS), 1)
        self._texture = self._texture[:, None].repeat(len(_MODE_PERIODS), 1)

    def _families_look(self, look_seed: int) -> None:
        """[K, 3] look tables, class names and the classes' frequencies of the "families" scenes."""
        k, n_modes = np.arange(self.num_classes), len(_MODE_PERIODS)
        family, member = k // len(_FAMILY_TEXTURES), k % len(_FAMILY_TEXTURES)
        hues = (family + 0.5 * (look_seed % 2)) / -(-self.num_classes // len(_FAMILY_TEXTURES))
        self._colour, self._freq = _mode_tables(hues, 1 / 30, k)
        kind, degrees = np.array(_FAMILY_TEXTURES).T
        self._texture = kind[member][:, None].repeat(n_modes, 1)
        self._angle = np.radians(degrees[member]).astype(np.float32)[:, None].repeat(n_modes, 1)
        rank = np.random.default_rng([look_seed, _STREAM]).permutation(self.num_classes)
        self.frequencies = 1.0 / (rank + 1)
        self.frequencies /= self.frequencies.sum()
        self.class_names = tuple(f"fam{f}_" + ("stripes" if kind[j] == STRIPES else "checker") + str(degrees[j])
                                 for f, j in zip(family, member))

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image HxWx3 uint8, label HxW int64) of scene `index`, a pure function of seed, split, index."""
        rng = np.random.Generator(np.random.PCG64([self.seed, _STREAM, _SPLIT_IDS[self.split], index]))
        h, w = self.size
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        # Regions: Voronoi cells of 3..8 seeds (families: 6..10) in sinusoidally warped coordinates
        # (blob-like borders).
        families = self.scenes == "families"
        n = int(rng.integers(6, 11) if families else rng.integers(3, 9))
        amp, wavelength, phase = (rng.uniform(lo, hi, 2).astype(np.float32) for lo, hi in
                                  ((2, 8), (24, 64), (0, 2 * np.pi)))
        wx = x + amp[0] * np.sin(2 * np.pi * y / wavelength[0] + phase[0])
        wy = y + amp[1] * np.sin(2 * np.pi * x / wavelength[1] + phase[1])
        centres = (rng.uniform(0, 1, (n, 2)) * (h, w)).astype(np.float32)
        region = ((wy[None] - centres[:, 0, None, None]) ** 2 + (wx[None] - centres[:, 1, None, None]) ** 2
                  ).argmin(0)
        if families:  # 2-4 classes of long-tailed frequencies share the regions
            present = rng.choice(self.num_classes, int(rng.integers(2, 5)), replace=False, p=self.frequencies)
            classes = present[rng.integers(0, len(present), n)]
        else:
            classes = rng.integers(0, self.num_classes, n)
        label = classes[region]
        # Texture: binary pattern (equal shares of 0 and 1) with a random phase per region.
        offset = rng.uniform(0, 2 * np.pi, (2, n)).astype(np.float32)[:, region]
        # the region's appearance mode (always 0 for "pairs", whose stream draws nothing for it)
        mode = (rng.integers(0, self._angle.shape[1], n) if self._angle.shape[1] > 1 else np.zeros(n, int))[region]
        look = (label, mode)
        freq, angle, texture = self._freq[look], self._angle[look], self._texture[look]
        u, v = x * np.cos(angle) + y * np.sin(angle), y * np.cos(angle) - x * np.sin(angle)
        stripes = np.sin(v * freq + offset[0]) > 0  # constant along u: stripes run at `angle`
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
