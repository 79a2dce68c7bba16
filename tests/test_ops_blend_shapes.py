"""gated_blend on inputs without spatial dimensions, and the error for fewer than two dimensions."""

import pytest
import torch

import csfr
from csfr.ops import reference


@pytest.mark.parametrize("gate", [(4, 6), (4, 1), (1, 6)])
def test_two_dimensional_inputs_match_the_reference(gate):
    x, s = torch.randn(4, 6), torch.randn(4, 6)
    g = torch.randn(gate)
    torch.testing.assert_close(csfr.ops.gated_blend(x, s, g, backend="cpu"), reference.gated_blend(x, s, g))


def test_one_dimensional_input_is_named():
    x = torch.randn(5)
    with pytest.raises(ValueError, match=r"gated_blend: x must be \[B, C, \*spatial\], got shape \(5,\)"):
        csfr.ops.gated_blend(x, x, x, backend="cpu")
