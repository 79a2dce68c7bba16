"""csfr: Consistent-Separable Feature Representation for semantic segmentation."""

from csfr import losses, models, ops

__version__ = "0.1.0"
__all__ = ["__version__", "losses", "models", "ops"]
