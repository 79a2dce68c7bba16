"""What every dataset shares: the sample contract, reading with Pillow, file pairing, label tables.

A dataset yields `{"image": HxWx3 uint8, "label": HxW int64 train ids (255 = ignore), "meta": dict}`.
With a transform, `transform(image, label, rng)` is merged into that dict; rng is seeded from
(seed, epoch, index) only, so augmentation does not depend on which DataLoader worker reads it.
Every check that can be made when the dataset is built is made then; the rest (unreadable file,
size mismatch, unknown label value) raises when the item is read, naming the file.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from csfr.ops.layout import IGNORE_INDEX

TRAIN_ID_SUFFIX = "_labelTrainIds.png"

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Mapping]


class DatasetCountWarning(UserWarning):
    """A split holds a different number of images than the standard release of the benchmark."""


def make_palette(num_classes: int) -> np.ndarray:
    """Distinct deterministic colours (PASCAL VOC bit-interleaving, starting after black)."""
    ids = np.arange(1, num_classes + 1)
    palette = np.zeros((num_classes, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def label_table(mapping: Mapping[int, int]) -> np.ndarray:
    """Lookup table raw value -> train id; -1 marks values that are not in the table."""
    table = np.full(max(mapping) + 1, -1, np.int64)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table


def identity_table(num_classes: int) -> np.ndarray:
    """Table for files already in train ids: 0..K-1 and 255 pass, anything else is an error."""
    return label_table({**{k: k for k in range(num_classes)}, IGNORE_INDEX: IGNORE_INDEX})


def apply_table(raw: np.ndarray, table: np.ndarray, path: Path | str) -> np.ndarray:
    """Map raw label values through `table`; a value outside it raises, naming value and file."""
    raw = raw.astype(np.int64, copy=False)
    bad = (raw < 0) | (raw >= len(table))
    if not bad.any():
        out = table[raw]
        bad = out < 0
        if not bad.any():
            return out
    values = np.unique(raw[bad])
    raise ValueError(f"label file {path}: value {values[0]} is not a known label id "
                     f"(unknown values: {values[:10].tolist()})")


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read {what} file {path} (unreadable or truncated): {e}") from e
    return img


def rgb_array(img: Image.Image, source: str, orient: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB array of a Pillow image. 16-bit grey images (modes I;16*, or I within 16
    bits) are scaled to 0..255 (Pillow's own conversion clips them, turning most pixels white);
    other high-bit-depth modes are refused. `orient` applies the EXIF orientation (photos from
    phones), as a user's image must be, never a dataset's, whose labels match the stored pixels."""
    if orient:
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):
        values = np.asarray(img)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"image {source}: {img.mode} values {values.min()}..{values.max()} exceed 16 bits; "
                             "convert it to 8 or 16 bits per channel")
        grey = np.round(values.astype(np.float64) / 257).astype(np.uint8)  # 65535 -> 255
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise ValueError(f"image {source}: floating-point images (mode F) are not supported; save it as 8 or 16 bits")
    return np.asarray(img.convert("RGB"))


def read_image(path: Path | str, orient: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB array of an image file (see rgb_array)."""
    return rgb_array(_open(Path(path), "image"), str(path), orient)


def read_label(path: Path | str) -> np.ndarray:
    """HxW integer array of a single-channel (L, P, I or I;16) label PNG, values untouched."""
    img = _open(Path(path), "label")
    if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"label file {path} has mode {img.mode}; expected a single-channel label map")
    return np.asarray(img)


def save_png(array: np.ndarray | Image.Image, path: Path) -> None:
    """Write an array (label map or RGB image) or a Pillow image as PNG under a temporary name in
    the same folder, then rename it (atomic: `path` is either complete or absent)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def locate(root: Path, candidates: Iterable[str], marker: str, what: str, layout: str) -> Path:
    """The first root/candidate holding the folder `marker` (a layout may start at several depths)."""
    for sub in candidates:
        if (root / sub / marker).is_dir():
            return root / sub
    tried = ", ".join(str(root / sub / marker) for sub in candidates)
    raise FileNotFoundError(f"{what}: none of {tried} exists; expected layout:\n{layout}")


def _index(folder: Path, suffixes: Iterable[str]) -> dict[str, dict[str, Path]]:
    """relative stem -> {suffix: path} for the files below `folder` ending with one of `suffixes`
    (the longest suffix wins, so `.png` does not also claim `x_labelTrainIds.png`)."""
    suffixes = sorted(suffixes, key=len, reverse=True)
    found: dict[str, dict[str, Path]] = {}
    for path in folder.rglob("*"):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        if suffix is not None and not path.name.startswith(".") and path.is_file():
            key = path.relative_to(folder).as_posix()[: -len(suffix)]
            found.setdefault(key, {})[suffix] = path
    return found


def _raise_unpaired(problems: list[str]) -> None:
    if problems:
        more = f"\n... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError("\n".join(problems[:5]) + more)


def scan_pairs(image_dir: Path, image_suffix: str, label_dir: Path,
               label_suffixes: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """Pair every image under `image_dir` with the label under `label_dir` at the same relative stem.

    `label_suffixes` are in order of preference (e.g. converted train ids before raw ids). An image
    without a label, or a label without an image, raises naming both files.
    """
    images = _index(image_dir, (image_suffix,))
    labels = _index(label_dir, label_suffixes)
    problems = [f"image {images[k][image_suffix]} has no label (expected {label_dir / k}{label_suffixes[-1]})"
                for k in sorted(images.keys() - labels.keys())]
    problems += [f"label {path} has no image (expected {image_dir / k}{image_suffix})"
                 for k in sorted(labels.keys() - images.keys()) for path in labels[k].values()]
    _raise_unpaired(problems)
    return [(images[k][image_suffix], next(labels[k][s] for s in label_suffixes if s in labels[k]))
            for k in sorted(images)]


def listed_pairs(list_file: Path, image_dir: Path, image_suffix: str, label_dir: Path,
                 label_suffix: str) -> list[tuple[Path, Path]]:
    """Pairs for the names in a split list file (one name a line); a missing file of a pair raises."""
    names = [line.strip().removesuffix(image_suffix) for line in list_file.read_text().splitlines()
             if line.strip()]
    pairs = [(image_dir / f"{n}{image_suffix}", label_dir / f"{n}{label_suffix}") for n in names]
    problems = []
    for image, label in pairs:
        if not image.is_file() and not label.is_file():
            problems.append(f"image {image} and label {label} are missing (listed in {list_file})")
        elif not label.is_file():
            problems.append(f"image {image} has no label (expected {label}; listed in {list_file})")
        elif not image.is_file():
            problems.append(f"label {label} has no image (expected {image}; listed in {list_file})")
    _raise_unpaired(problems)
    return pairs


class SegmentationDataset(torch.utils.data.Dataset):
    """Base of all datasets: split check, seeding, transform application. Subclasses define `load`."""

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray
    num_classes: int
    ignore_index = IGNORE_INDEX
    splits: tuple[str, ...]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "class_names" in cls.__dict__:
            cls.num_classes = len(cls.class_names)
            if "palette" not in cls.__dict__:
                cls.palette = make_palette(cls.num_classes)

    def __init__(self, split: str, transform: Transform | None = None, seed: int = 0):
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        self.split, self.transform, self.seed, self.epoch = split, transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of this epoch (call before each epoch's DataLoader pass)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation generator of item `index` in the current epoch."""
        return np.random.Generator(np.random.PCG64([self.seed, self.epoch, index]))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """(image HxWx3 uint8, label HxW int64 train ids, meta) of item `index`."""
        raise NotImplementedError

    def check(self, progress: bool = True) -> list[str]:
        """Reads every item once; one line per item that cannot be read (the file and why). Takes
        as long as an epoch of reading: for `csfr.train --check-data`, before hours of training."""
        problems = []
        for index in tqdm(range(len(self)), desc=f"check {self.name} {self.split}", disable=not progress,
                          leave=False):
            try:
                self.load(index)
            except (ValueError, OSError) as e:
                problems.append(str(e).splitlines()[0])
        return problems

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} {self.split}: index {index} out of range 0..{len(self) - 1}")
        image, label, meta = self.load(index)
        sample = {"image": image, "label": label, "meta": meta}
        if self.transform is not None:
            sample.update(self.transform(image, label, self.rng(index)))
        return sample


class FileDataset(SegmentationDataset):
    """A benchmark on disk: subclasses give `layout` (shown in errors), `expected_counts`, `raw_table`
    (official raw ids -> train ids; files named *_labelTrainIds.png are read as train ids) and
    `find_samples()` -> [(image path, label path or None)]."""

    layout: str
    expected_counts: Mapping[str, int]
    raw_table: np.ndarray | None = None

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None, seed: int = 0):
        super().__init__(split, transform, seed)
        if root is None or not Path(root).is_dir():
            raise FileNotFoundError(f"{self.name}: root folder {root} not found; expected layout:\n{self.layout}")
        self.root = Path(root)
        self.samples = self.find_samples()
        if not self.samples:
            raise ValueError(f"{self.name} {self.split}: no images found under {self.root}; "
                             f"expected layout:\n{self.layout}")
        expected = self.expected_counts[split]
        if len(self.samples) != expected:
            warnings.warn(f"{self.name} {split}: found {len(self.samples)} images, the standard split has "
                          f"{expected}", DatasetCountWarning, stacklevel=3)

    def find_samples(self) -> list[tuple[Path, Path | None]]:
        raise NotImplementedError

    def find_root(self, *candidates: str, marker: str) -> Path:
        return locate(self.root, candidates, marker, self.name, self.layout)

    def split_path(self, path: Path) -> Path:
        """`path` (a split's folder or list file) if it exists, else an error showing the layout."""
        if not path.exists():
            raise FileNotFoundError(f"{self.name} split {self.split!r}: {path} not found; "
                                    f"expected layout:\n{self.layout}")
        return path

    def table_for(self, label_path: Path) -> np.ndarray:
        if label_path.name.endswith(TRAIN_ID_SUFFIX) or self.raw_table is None:
            return identity_table(self.num_classes)
        return self.raw_table

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        if label_path is None:
            label = np.full(image.shape[:2], IGNORE_INDEX, np.int64)
        else:
            raw = read_label(label_path)
            if raw.shape != image.shape[:2]:
                raise ValueError(f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} "
                                 f"but label {label_path} is {raw.shape[1]}x{raw.shape[0]} (WxH)")
            label = apply_table(raw, self.table_for(label_path), label_path)
        meta = {"image_path": str(image_path), "label_path": None if label_path is None else str(label_path),
                "index": index, "dataset": self.name, "split": self.split}
        return image, label, meta
