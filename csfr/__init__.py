"""csfr: Consistent-Separable Feature Representation for semantic segmentation."""

from csfr import ops

__version__ = "0.1.0"
__all__ = ["__version__", "ops"]
