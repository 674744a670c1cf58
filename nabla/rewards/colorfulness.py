"""Colourfulness (Hasler & Süsstrunk 2003), a differentiable image reward with no parameters.

On opponent channels rg = R − G and yb = ½(R + G) − B, computed per image over its pixels:

    M = sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²)

Values are in the units of the [0, 1] input (the paper's 0–255 scale is 255× larger): a grey
image scores ≈ 0, a saturated one ≈ 0.5–1.
"""

from __future__ import annotations

from typing import Sequence

import torch

from nabla.rewards.base import Reward, register_reward


def colorfulness(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """M for images (B, 3, H, W) in [0, 1] → (B,).

    ``eps`` sits inside both square roots: sqrt's gradient is infinite at 0, which a grey
    image (σ = μ = 0) would otherwise hit. Variances are population variances (over pixels).
    """
    r, g, b = images.unbind(dim=1)
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    spread = torch.sqrt(rg.var(dim=1, correction=0) + yb.var(dim=1, correction=0) + eps)
    offset = torch.sqrt(rg.mean(dim=1).square() + yb.mean(dim=1).square() + eps)
    return spread + 0.3 * offset


@register_reward
class Colorfulness(Reward):
    """Hasler–Süsstrunk colourfulness of each image; prompts are ignored."""

    name = "colorfulness"
    scales = ("tiny", "sd15")

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return colorfulness(samples, self.eps)
