"""The csfr operators: class_centroids, cac_loss, gated_blend, on several backends.

Each takes backend="auto"|"torch"|"cpu"|"cuda"|"triton" (CSFR_BACKEND overrides "auto");
`backends()` says which exist here and why the others do not.
"""

from csfr.ops import kernel_fakes, reference  # noqa: F401  (kernel_fakes registers the C++ ops' fakes)
from csfr.ops.blend import gated_blend
from csfr.ops.cac import cac_loss, cac_terms
from csfr.ops.centroids import class_centroids
from csfr.ops.dispatch import BackendUnavailable, backends

__all__ = [
           "BackendUnavailable",
           "backends",
           "cac_loss",
           "cac_terms",
           "class_centroids",
           "gated_blend",
           "reference",
]
