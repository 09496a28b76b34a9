"""A model's linear layers on oneDNN, their weights reordered once into its blocked layout, on AVX-512 CPUs.

On the CPU, PyTorch multiplies with MKL. On two cores of an AMD Zen 4 (AVX-512), MKL ran MiniLM's linear layers
(product and bias) at 138–158 GFLOP/s and oneDNN's prepacked kernels at 185–196. That made the eager model ~1.2×
faster in fp32, with the same vectors (cosine 0.9999998). On a Zen 3 (AVX2), an earlier measurement had MKL
ahead. So ``use_onednn`` picks oneDNN where the CPU has AVX-512, and ``prepack_linears`` swaps the layers. These
are the kernels ``torch.compile`` uses on the CPU with weight freezing, without the ~20 s that compiling takes.

The choice follows the CPU's instruction set, not a timing at load: the two libraries' vectors differ in their
last bits, and a timing can tip either way on a busy machine, while a graph rebuilt from unchanged inputs must come
out identical.

In a BERT layer, the element-wise work after two of the products also goes into oneDNN's kernel, as its epilogue,
while the product's output is still in cache: the feed-forward's GELU, and the residual sum before each
LayerNorm. On two cores of an Intel Xeon (AVX-512), run in turn with the unfused model on the same 1,000 texts,
that made the eager model ~7 % faster (GELU ~5 %, the sums ~2 %), with vectors bit-identical to the unfused ones.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
CHECK_ROWS = 256  # tokens in the one product that must agree with MKL's before oneDNN is used


class PrepackedLinear(torch.nn.Module):
    """``nn.Linear`` for inference, its weight reordered for oneDNN once; inputs may have any leading dimensions.

    ``gelu=True`` applies the exact (erf) GELU to the product inside the same kernel."""

    def __init__(self, linear: torch.nn.Linear, *, gelu: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # kept for model code that reads a layer's weight (its dtype, say); the product uses the packed copy
        self.weight = linear.weight.detach()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.epilogue = ("gelu", "none") if gelu else ("none", "")  # oneDNN's names: GELU, no tanh approximation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attr, algorithm = self.epilogue
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, attr, [], algorithm)

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``self(x) + residual``, the sum done by the product's kernel (for a layer without its own epilogue)."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed_weight, self.bias, "add")


class GeluFeedForwardIn(torch.nn.Module):
    """BERT's ``BertIntermediate`` (dense, then GELU) as one oneDNN call."""

    def __init__(self, dense: torch.nn.Linear) -> None:
        super().__init__()
        self.dense = PrepackedLinear(dense, gelu=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


class ResidualOutput(torch.nn.Module):
    """BERT's ``BertSelfOutput`` and ``BertOutput``: ``LayerNorm(dense(h) + input)``, the sum in the product's
    kernel (their dropout does nothing in inference)."""

    def __init__(self, dense: torch.nn.Linear, layer_norm: torch.nn.Module) -> None:
        super().__init__()
        self.dense = PrepackedLinear(dense)
        self.LayerNorm = layer_norm  # BERT's name, so the module tree reads as before

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense.plus(hidden_states, input_tensor))


def submodules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """Every module below ``model``'s top with its parent module and attribute name: what a swap needs."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]


def linears(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """Every ``nn.Linear`` in ``model`` with its parent module and attribute name."""
    return [(parent, name, child) for parent, name, child in submodules(model) if isinstance(child, torch.nn.Linear)]


def use_onednn(model: torch.nn.Module) -> bool:
    """Whether ``model``'s linear layers should run on oneDNN here: the CPU has AVX-512, this build of PyTorch has
    oneDNN, and its prepacked product on the model's largest layer agrees with MKL's, also with either epilogue."""
    layers = linears(model)
    capability = torch.backends.cpu.get_cpu_capability()
    if not layers or not capability.startswith("AVX512") or not torch.backends.mkldnn.is_available():
        return False
    largest = max((layer for _, _, layer in layers), key=lambda layer: layer.weight.numel())
    x = torch.randn(
        CHECK_ROWS, largest.in_features, dtype=largest.weight.dtype, generator=torch.Generator().manual_seed(0)
    )
    residual = torch.randn(CHECK_ROWS, largest.out_features, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = largest(x)
        try:
            plain, gelu = PrepackedLinear(largest), PrepackedLinear(largest, gelu=True)
            pairs = [(plain(x), expected), (gelu(x), torch.nn.functional.gelu(expected)),
                     (plain.plus(x, residual), expected + residual)]  # fmt: skip
        except (RuntimeError, AttributeError) as error:  # an op this build (or this CPU) lacks
            log.info("oneDNN's prepacked linear is not usable here (%s): MKL multiplies", error)
            return False
        if not all(torch.allclose(got, want, rtol=1e-4, atol=1e-4) for got, want in pairs):
            log.warning("oneDNN's prepacked linear disagrees with MKL's here: MKL multiplies")
            return False
    return True


def prepack_linears(model: torch.nn.Module) -> int:
    """Swap every ``nn.Linear`` in ``model`` for a ``PrepackedLinear`` (inference only), BERT layers' GELU and
    residual sums fused into theirs (``fuse_bert_epilogues``); returns how many linear layers were swapped."""
    fused = fuse_bert_epilogues(model)
    layers = linears(model)
    for parent, name, layer in layers:
        setattr(parent, name, PrepackedLinear(layer))
    return fused + len(layers)


def fuse_bert_epilogues(model: torch.nn.Module) -> int:
    """Swap BERT's feed-forward input (when its activation is the exact GELU) and its two residual outputs for
    their fused ``PrepackedLinear`` forms; returns how many linear layers that swapped. Other architectures' blocks,
    copies of BERT's included, are left alone: only these classes' forwards are known to be what is fused here."""
    from transformers.activations import GELUActivation
    from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfOutput

    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    for parent, name, child in submodules(model):
        dense = getattr(child, "dense", None)
        if not isinstance(dense, torch.nn.Linear):
            continue
        if type(child) is BertIntermediate:
            act = child.intermediate_act_fn
            if type(act) is GELUActivation and act.act is torch.nn.functional.gelu:
                swaps.append((parent, name, GeluFeedForwardIn(dense)))
        elif type(child) in (BertSelfOutput, BertOutput) and isinstance(norm := child.LayerNorm, torch.nn.Module):
            swaps.append((parent, name, ResidualOutput(dense, norm)))
    for parent, name, fused in swaps:
        setattr(parent, name, fused)
    return len(swaps)
