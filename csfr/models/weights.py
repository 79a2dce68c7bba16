"""Loading ImageNet-pretrained backbone weights from a local file, with a report of what did not fit.

Accepted: a torchvision ResNet state_dict (`conv1`, `bn1`, `layerN...`; its `fc.*` classifier is
ignored), or an MMCV / MMSegmentation checkpoint of a deep-stem ResNet (`stem.0`, ...), possibly
wrapped as {"state_dict": ...} and prefixed `backbone.` (other parts of a segmentor checkpoint
are ignored) or `module.`. Nothing is downloaded.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

_IGNORED_PREFIXES = ("fc.",)


@dataclass
class LoadReport:
    """What a weight file did not provide, held in excess, or held in another shape."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def hint(self) -> str | None:
        """Why the keys differ when the file and the backbone have different stems."""
        def has(keys: list[str], prefix: str) -> bool:
            return any(k.startswith(prefix) for k in keys)
        if has(self.missing, "stem.") and has(self.unexpected, "conv1."):
            return "the file has a 7x7 stem (conv1/bn1): build the model with deep_stem=False"
        if has(self.missing, "conv1.") and has(self.unexpected, "stem."):
            return "the file has a deep stem (stem.*): build the model with deep_stem=True"
        return None

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.loaded} tensors loaded"]
        for title, keys in (("missing in the file", self.missing), ("unexpected in the file", self.unexpected),
                            ("shape mismatch", self.mismatched), ("ignored", self.ignored)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


def check_file(path: str | os.PathLike) -> None:
    """Raise FileNotFoundError unless `path` is an existing file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights {path} do not exist (nothing is downloaded; give a local file)")


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    check_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"pretrained weights {path} cannot be read ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained weights {path}: expected a state_dict of tensors")
    return state


def _backbone_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip `module.` and, in segmentor checkpoints, keep only `backbone.`; return (weights, ignored)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored = []
    if any(k.startswith("backbone.") for k in state):
        ignored = sorted(k for k in state if not k.startswith("backbone."))
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    ignored += sorted(k for k in state if k.startswith(_IGNORED_PREFIXES))
    return {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}, ignored


def load_pretrained(backbone: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Copy the weights in `path` into `backbone`. strict: any missing, unexpected or mismatched
    tensor raises ValueError with the report (nothing is loaded). Not strict: the tensors that
    fit are loaded and a warning carries the report. BatchNorm `num_batches_tracked` counters
    absent from older files are not counted as missing."""
    weights, ignored = _backbone_keys(_read_state_dict(path))
    own = backbone.state_dict()
    report = LoadReport(str(path), ignored=ignored)
    report.missing = sorted(k for k in own if k not in weights and not k.endswith("num_batches_tracked"))
    report.unexpected = sorted(k for k in weights if k not in own)
    report.mismatched = sorted(f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
                               if k in weights and weights[k].shape != own[k].shape)
    if strict and not report.clean:
        raise ValueError(f"pretrained weights do not fit the backbone:\n{report}")
    fitting = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
    backbone.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    if not report.clean:
        warnings.warn(f"pretrained weights loaded partially:\n{report}", stacklevel=2)
    return report
