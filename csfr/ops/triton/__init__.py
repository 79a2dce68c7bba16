"""The Triton backend: the five kernels of the contract in docs/kernels.md.

Runs on any GPU Triton supports, and on CPU tensors under TRITON_INTERPRET=1 (how the
tests check it without a GPU). Block sizes are autotuned per size bucket on a GPU (fixed in
deterministic mode, which also avoids atomics).
"""

from csfr.ops.triton.blend import blend_backward, blend_forward
from csfr.ops.triton.segment import cac_pixel_pass, pixel_grad, segment_sum

__all__ = ["blend_backward", "blend_forward", "cac_pixel_pass", "pixel_grad", "segment_sum"]
