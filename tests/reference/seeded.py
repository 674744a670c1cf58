"""Weights that any torch version regenerates from a list of shapes: the reference scripts load
them into the original packages' models, the tests into ours."""

from __future__ import annotations

import torch


def seeded_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Tensor i (in the given order) is 0.3 × N(0, 1) drawn from seed 1000 + i."""
    return {
        key: 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(1000 + i))
        for i, (key, shape) in enumerate(shapes.items())
    }
