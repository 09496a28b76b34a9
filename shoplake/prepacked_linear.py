"""A model's linear layers on oneDNN, their weights reordered once into its blocked layout, on AVX-512 CPUs.

On the CPU, PyTorch multiplies with MKL. On two cores of an AMD Zen 4 (AVX-512), MKL ran MiniLM's linear layers
(product and bias) at 138–158 GFLOP/s and oneDNN's prepacked kernels at 185–196. That made the eager model ~1.2×
faster in fp32, with the same vectors (cosine 0.9999998). On a Zen 3 (AVX2), an earlier measurement had MKL
ahead. So ``use_onednn`` picks oneDNN where the CPU has AVX-512, and ``prepack_linears`` swaps the layers. These
are the kernels ``torch.compile`` uses on the CPU with weight freezing, without the ~20 s that compiling takes.

The choice follows the CPU's instruction set, not a timing at load: the two libraries' vectors differ in their
last bits, and a timing can tip either way on a busy machine, while a graph rebuilt from unchanged inputs must come
out identical.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
CHECK_ROWS = 256  # tokens in the one product that must agree with MKL's before oneDNN is used


class PrepackedLinear(torch.nn.Module):
    """``nn.Linear`` for inference, its weight reordered for oneDNN once; inputs may have any leading dimensions."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # kept for model code that reads a layer's weight (its dtype, say); the product uses the packed copy
        self.weight = linear.weight.detach()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def linears(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """Every ``nn.Linear`` in ``model`` with its parent module and attribute name."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.Linear)
    ]


def use_onednn(model: torch.nn.Module) -> bool:
    """Whether ``model``'s linear layers should run on oneDNN here: the CPU has AVX-512, this build of PyTorch has
    oneDNN, and its prepacked product on the model's largest layer agrees with MKL's."""
    layers = linears(model)
    capability = torch.backends.cpu.get_cpu_capability()
    if not layers or not capability.startswith("AVX512") or not torch.backends.mkldnn.is_available():
        return False
    largest = max((layer for _, _, layer in layers), key=lambda layer: layer.weight.numel())
    x = torch.randn(
        CHECK_ROWS, largest.in_features, dtype=largest.weight.dtype, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        try:
            got = PrepackedLinear(largest)(x)
        except RuntimeError as error:  # an op this build or this CPU lacks
            log.info("oneDNN's prepacked linear is not usable here (%s): MKL multiplies", error)
            return False
        if not torch.allclose(got, largest(x), rtol=1e-4, atol=1e-4):
            log.warning("oneDNN's prepacked linear disagrees with MKL's here: MKL multiplies")
            return False
    return True


def prepack_linears(model: torch.nn.Module) -> int:
    """Swap every ``nn.Linear`` in ``model`` for a ``PrepackedLinear`` (inference only); returns how many."""
    layers = linears(model)
    for parent, name, layer in layers:
        setattr(parent, name, PrepackedLinear(layer))
    return len(layers)
