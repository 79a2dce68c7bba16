"""csfr: Consistent-Separable Feature Representation for semantic segmentation."""

from csfr import losses, models, ops
from csfr.api import Predictor, load

__version__ = "0.1.0"
__all__ = ["Predictor", "__version__", "load", "losses", "models", "ops"]
