"""`csfr.load(checkpoint)`: a trained model, ready to segment one's own images.

    model = csfr.load("runs/demo/checkpoints/best.pt")
    labels = model.predict("street.png")             # HxW class ids at the image's size
    colours = model.palette[labels]                  # or model.class_names[labels[y, x]]

The predictor applies exactly what `csfr.evaluate` scores (the same functions): the evaluation
pipeline of the checkpoint's config (resize to eval.base_size where the preset has one, ImageNet
normalisation), then whole-image or sliding-window inference at eval.scales, with flips if
eval.flip, under train.amp; the class probabilities are resized to the input's size.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from csfr.configs.schema import SCALES
from csfr.data import DATASETS, build_dataset
from csfr.data.base import FileDataset, read_image, rgb_array
from csfr.engine import checkpoint
from csfr.engine.builders import build_model, eval_transform
from csfr.engine.distributed import pick_device
from csfr.engine.inference import label_maps
from csfr.ops.layout import IGNORE_INDEX

_NO_LABEL = np.zeros((0, 0), np.int64)  # the test pipeline resizes only the image; it needs no label
ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


class Predictor:
    """A trained network with what prediction needs: the evaluation settings of its config, its
    class names and palette. Built by `csfr.load`; `predict(image)` returns label maps."""

    def __init__(self, model: torch.nn.Module, config: dict, class_names: Sequence[str], palette: np.ndarray,
                 device: torch.device, ignore_index: int = IGNORE_INDEX):
        self.model = model.to(device).eval()
        self.config, self.device, self.ignore_index = config, device, ignore_index
        self.eval_cfg, self.amp = config["eval"], config["train"]["amp"]
        self.class_names = tuple(class_names)
        self.palette = np.asarray(palette, np.uint8)
        self.transform = eval_transform(config)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _label_map(self, image: np.ndarray) -> np.ndarray:
        """HxW int64 class ids of one HxWx3 uint8 image, through the evaluator's own functions."""
        network_input = torch.from_numpy(self.transform(image, _NO_LABEL, None)["image"])[None].to(self.device)
        return label_maps(self.model, network_input, image.shape[:2], self.eval_cfg, self.amp)[0].cpu().numpy()

    @torch.no_grad()
    def predict(self, image: ImageLike | Sequence[ImageLike]) -> np.ndarray | torch.Tensor | list:
        """Label maps (class ids, int64) at the size of the input.

        Args:
            image: a path to an image file, a PIL image, a uint8 numpy array HxWx3 (RGB) or a
                batch BxHxWx3, a tensor 3xHxW or Bx3xHxW (uint8 0..255, or floating point in
                [0, 1] as torchvision's ToTensor gives; it is rounded to 8 bits like a file),
                or a list of these.
        Returns:
            numpy HxW (BxHxW for a batch) for paths, PIL images and arrays; a tensor HxW / BxHxW
            on the input's device for tensors; a list of those for a list.
        """
        if isinstance(image, (list, tuple)):
            return [self.predict(item) for item in image]
        if isinstance(image, torch.Tensor):
            batch = _tensor_images(image)
            out = torch.from_numpy(np.stack([self._label_map(im) for im in batch])).to(image.device)
            return out[0] if image.dim() == 3 else out
        if isinstance(image, np.ndarray):
            _check_array(image)
            if image.ndim == 4:
                return np.stack([self._label_map(im) for im in image])
            return self._label_map(image)
        if isinstance(image, Image.Image):
            return self._label_map(rgb_array(image, "given", orient=True))
        if isinstance(image, (str, os.PathLike)):
            return self._label_map(read_image(image, orient=True))
        raise TypeError(f"predict: expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 colours of a label map (the palette the model was trained with)."""
        return self.palette[labels]


def _check_array(image: np.ndarray) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"predict: numpy images must be uint8 (0..255), got {image.dtype}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"predict: numpy images must be HxWx3 or BxHxWx3 RGB, got shape {image.shape}")


def _tensor_images(image: torch.Tensor) -> np.ndarray:
    """Bx3xHxW / 3xHxW tensor -> BxHxWx3 uint8 numpy."""
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"predict: tensors must be 3xHxW or Bx3xHxW RGB, got shape {tuple(image.shape)}")
    batch = (image if image.dim() == 4 else image[None]).detach().cpu()
    if batch.is_floating_point():
        if batch.numel() and (batch.min() < 0 or batch.max() > 1):
            raise ValueError(f"predict: floating-point tensors must hold values in [0, 1] (got "
                             f"{float(batch.min()):.3g}..{float(batch.max()):.3g}); pass uint8 for 0..255")
        batch = (batch * 255).round().to(torch.uint8)
    elif batch.dtype != torch.uint8:
        raise TypeError(f"predict: tensors must be uint8 (0..255) or floating point in [0, 1], got {batch.dtype}")
    return batch.permute(0, 2, 3, 1).numpy()


def _classes(state: dict, config: dict, source: str) -> tuple[Sequence[str], np.ndarray, int]:
    """(class names, palette, ignore index) saved in the checkpoint; for a checkpoint written
    before they were saved, those of the config's dataset definition (no data needed on disk)."""
    if "classes" in state:
        saved = state["classes"]
        return saved["names"], np.asarray(saved["palette"], np.uint8), saved["ignore_index"]
    data = config["data"]
    cls = DATASETS.get(data["dataset"])
    if cls is None:
        raise ValueError(f"checkpoint {source} names an unknown dataset {data['dataset']!r} and holds no class names")
    if issubclass(cls, FileDataset):
        names, palette = cls.class_names, cls.palette
    else:  # built in (synthetic): its classes follow from its options
        dataset = build_dataset(data["dataset"], data["root"], data["val_split"],
                                **{**data["options"], **data["val_options"]})
        names, palette = dataset.class_names, dataset.palette
    warnings.warn(f"checkpoint {source} holds no class names or palette (written by an older csfr); "
                  f"using those of the {data['dataset']} dataset definition", stacklevel=3)
    return names, palette, cls.ignore_index


def load(checkpoint_path: str | os.PathLike, device: str | torch.device = "auto",
         scales: Sequence[float] | None = None, flip: bool | None = None, mode: str | None = None) -> Predictor:
    """A checkpoint written by csfr.train as a ready Predictor.

    Args:
        checkpoint_path: an iter_*.pt or best.pt of a run.
        device: "auto" (a GPU when there is one), "cpu", "cuda" or a torch.device.
        scales, flip, mode: override the config's eval.scales, eval.flip, eval.mode
            ("whole" or "slide"); by default the checkpoint's own evaluation settings.
    Returns:
        A Predictor in eval mode on `device`; kernels are picked for that device (backend auto).
    """
    source = str(checkpoint_path)
    state = checkpoint.read_trained(checkpoint_path)
    config = state["config"]
    config["model"]["pretrained"] = None  # the checkpoint holds every weight
    config["train"]["backend"] = "auto"
    overrides = {"scales": None if scales is None else [float(s) for s in scales], "flip": flip, "mode": mode}
    config["eval"].update({k: v for k, v in overrides.items() if v is not None})
    if config["eval"]["mode"] not in ("whole", "slide"):
        raise ValueError(f"eval mode must be whole or slide, got {config['eval']['mode']!r}")
    low, high = SCALES
    if not config["eval"]["scales"] or any(not low <= s <= high for s in config["eval"]["scales"]):
        raise ValueError(f"scales must be numbers in [{low}, {high}], got {config['eval']['scales']}")
    names, palette, ignore_index = _classes(state, config, source)
    num_classes = state.get("num_classes", len(names))
    if len(names) != num_classes or len(palette) != num_classes:
        raise ValueError(f"checkpoint {source}: {len(names)} class names and {len(palette)} colours "
                         f"for {num_classes} classes")
    model = build_model(config, num_classes)
    checkpoint.load_weights(model, state["model"], source)
    return Predictor(model, config, names, palette, _device(device), ignore_index)


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device in ("auto", "cpu"):
        return pick_device(device)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for, but torch sees no CUDA device")
        if resolved.index is None:
            return pick_device("cuda")
        if resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} was asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return resolved


__all__ = ["Predictor", "load"]
