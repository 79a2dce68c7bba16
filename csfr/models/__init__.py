"""The CSFR network and its baselines: `build(name, num_classes, **options)`, `names()`."""

from csfr.models.registry import DEFAULTS, build, names, parse
from csfr.models.segmentor import Segmentor
from csfr.models.weights import LoadReport, load_pretrained

__all__ = ["DEFAULTS", "LoadReport", "Segmentor", "build", "load_pretrained", "names", "parse"]
