"""LoRA folded into its layer's weight: y = x (W + s B A)ᵀ + b in one matmul.

A LoRA layer as peft runs it costs the frozen matmul plus two thin ones (x Aᵀ, then · Bᵀ), each
over every activation row, and in the backward pass their two VJPs. At the tiny UNet's widths
(32–64 channels, 4,096 rows per attention projection) those thin passes and their Python cost
are about a tenth of a denoiser forward. Folding s B A into W first costs one C×r×C product per
layer and call (gradients into A and B still flow through it) and, without autograd, nothing at
all after the first call until A or B changes: a rollout folds once, not at each of its steps.

The result equals peft's to float rounding (the products are associated differently); with B = 0
(a fresh adapter) it is the frozen layer exactly. The toy's ``LoRALinear`` and the SD backend's
peft layers (``nabla.models.sd.FoldedLoraLinear``) share the cache below.
"""

from __future__ import annotations

import torch


def fold(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + s B A."""
    return weight + scaling * (lora_B @ lora_A)


class FoldCache:
    """The folded weight of one layer; kept between calls without autograd until a tensor changes
    (one extra copy of each adapted weight: small next to activations at every scale here)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None

    def weight(self, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
        if torch.is_grad_enabled():  # a graph into A and B: fold afresh
            return fold(weight, lora_A, lora_B, scaling)
        # in-place updates (optimiser steps, loading) bump _version; reassigned .data changes data_ptr
        key = tuple((t.data_ptr(), t._version) for t in (weight, lora_A, lora_B)) + (scaling,)
        if key != self._key:
            self._key, self._weight = key, fold(weight, lora_A, lora_B, scaling)
        return self._weight
