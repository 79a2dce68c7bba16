"""A TorchDispatchMode that records every aten op an operator issues, also inside csfr's Python
custom ops (which a plain mode sees as one opaque op). The five C++/Triton kernels stay opaque:
what they do inside is the backend's business, not the operators' Python code."""

import torch
from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode

# ops that read device data on the host: each is a host synchronisation on a GPU
HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::equal",
              "aten::allclose", "aten::tolist"}
COPIES = {"aten::clone", "aten::_to_copy", "aten::copy_", "aten::contiguous"}


class AtenTrace(TorchDispatchMode):
    """calls: list of (op name, args, kwargs, output) for every op run under the mode."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        opdef = OPDEFS.get(name) if name.startswith("csfr::") else None
        if opdef is not None:  # a composite csfr op: trace what its Python body does
            with self:
                out = opdef._init_fn(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        self.calls.append((name, args, kwargs, out))
        return out

    def names(self) -> list[str]:
        return [name for name, *_ in self.calls]

    def host_reads(self) -> list[str]:
        """Ops that read tensor data on the host, and copies to the CPU."""
        to_cpu = [n for n, _, kw, _ in self.calls if n == "aten::_to_copy" and str(kw.get("device")) == "cpu"]
        return [n for n in self.names() if n in HOST_READS] + to_cpu

    def copies_of(self, numel: int) -> list[str]:
        """Copy ops whose output has `numel` elements (e.g. copies of the features)."""
        return [n for n, _, _, out in self.calls
                if n in COPIES and isinstance(out, torch.Tensor) and out.numel() == numel]
