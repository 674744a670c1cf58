"""The 2-D toy's rewards, whose reward-tilted targets are known in closed form.

Both wrap the closed forms of :mod:`nabla.data.toy2d` (one definition of each reward), so the
value a sampler is trained on and the exact target it is scored against cannot drift apart.
"""

from __future__ import annotations

from typing import Sequence

import torch

from nabla.data import toy2d
from nabla.data.toy2d import GaussianMixture
from nabla.rewards.base import Reward, register_reward


class _ClosedFormReward(Reward):
    """A toy reward backed by a nabla.data.toy2d reward (LinearReward or QuadraticReward)."""

    scales = ("toy2d",)

    def __init__(self, closed_form: toy2d.Reward):
        super().__init__()
        self.closed_form = closed_form

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """r(x) for points x of shape (B, 2); the toy is unconditional, prompts are ignored."""
        return self.closed_form(samples)

    def exact_target(self, prior: GaussianMixture, beta: float) -> GaussianMixture:
        """The exact target p(x) ∝ p#(x) exp(β r(x)), again a Gaussian mixture."""
        return toy2d.tilt(prior, self.closed_form, beta)

    def reward_only_target(self, beta: float) -> GaussianMixture:
        """The target exp(β r(x)) / Z without the prior (ValueError when not normalisable)."""
        return toy2d.reward_only_target(self.closed_form, beta)

    def expected(self, mixture: GaussianMixture) -> float:
        """E[r(x)] under a mixture, exactly (the matched-reward levels' reference)."""
        return toy2d.expected_reward(mixture, self.closed_form)


@register_reward
class Linear(_ClosedFormReward):
    """r(x) = w · x. Tilting moves every component along w; exp(β w·x) alone has no target."""

    name = "linear"

    def __init__(self, w: Sequence[float] = (1.0, 0.0)):
        super().__init__(toy2d.LinearReward(w))


@register_reward
class Quadratic(_ClosedFormReward):
    """r(x) = −|x − c|² / 2: pulls samples towards ``center``; exp(β r) alone is N(c, I/β)."""

    name = "quadratic"

    def __init__(self, center: Sequence[float] = (0.0, 0.0)):
        super().__init__(toy2d.QuadraticReward(center))
