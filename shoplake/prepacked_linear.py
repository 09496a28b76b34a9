"""A model's linear layers on oneDNN, their weights reordered once into its blocked layout, where that is faster.

On the CPU, PyTorch multiplies with MKL. On two cores of an AMD Zen 4 (AVX-512), MKL ran MiniLM's linear layers
(product and bias) at 138–158 GFLOP/s and oneDNN's prepacked kernels at 185–196. That made the eager model ~1.2× faster in fp32,
with the same vectors (cosine 0.9999998). On a Zen 3 (AVX2), an earlier measurement had MKL ahead. So the encoder
first times both on the model's largest layer (``onednn_is_faster``), and swaps the layers only where oneDNN wins
(``prepack_linears``). These are the kernels ``torch.compile`` uses on the CPU with weight freezing, without the
~20 s that compiling takes.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)
PROBE_ROWS = 2_048  # tokens in the timed product: 32 texts of 64 tokens, a typical CPU batch
MARGIN = 0.95  # oneDNN must be clearly faster: within the timing's noise, MKL (PyTorch's own default) stays


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


def onednn_is_faster(model: torch.nn.Module) -> bool:
    """Whether oneDNN's prepacked product beats MKL's on ``model``'s largest linear layer here (best of three each,
    interleaved), and gives the same result. False where oneDNN is not available in this build of PyTorch."""
    layers = linears(model)
    if not layers or not torch.backends.mkldnn.is_available():
        return False
    largest = max((layer for _, _, layer in layers), key=lambda layer: layer.weight.numel())
    x = torch.randn(PROBE_ROWS, largest.in_features, dtype=largest.weight.dtype)
    with torch.inference_mode():
        try:
            packed = PrepackedLinear(largest)
            expected, got = largest(x), packed(x)
        except RuntimeError as error:  # an op this build or this CPU lacks
            log.info("oneDNN's prepacked linear is not usable here (%s): MKL multiplies", error)
            return False
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
            log.warning("oneDNN's prepacked linear disagrees with MKL's here: MKL multiplies")
            return False
        mkl = onednn = float("inf")
        for _ in range(3):
            mkl = min(mkl, _seconds(largest, x))
            onednn = min(onednn, _seconds(packed, x))
    flops = 2 * x.shape[0] * largest.in_features * largest.out_features
    log.info("CPU matrix products on the model's largest layer: MKL %.0f GFLOP/s, oneDNN prepacked %.0f",
             flops / mkl / 1e9, flops / onednn / 1e9)  # fmt: skip
    return onednn < MARGIN * mkl


def prepack_linears(model: torch.nn.Module) -> int:
    """Swap every ``nn.Linear`` in ``model`` for a ``PrepackedLinear`` (inference only); returns how many."""
    layers = linears(model)
    for parent, name, layer in layers:
        setattr(parent, name, PrepackedLinear(layer))
    return len(layers)


def _seconds(layer: torch.nn.Module, x: torch.Tensor) -> float:
    layer(x)  # warm: oneDNN builds its kernel for a new shape on first use
    began = time.perf_counter()
    layer(x)
    return time.perf_counter() - began
