"""The 2-D toy's ground truth: an isotropic Gaussian mixture and its exact reward tilts.

Everything here is closed form, so the toy can score a fine-tuned sampler against the true
target p(x) ∝ p#(x)^κ exp(β r(x)) rather than against another estimate:

* a Gaussian mixture stays a Gaussian mixture under forward noising (each component's
  variance grows to ᾱσ² + 1 − ᾱ), which gives exact noised scores and ε-targets;
* tilting a Gaussian by exp(β w·x) or exp(−β|x − c|²/2) gives another Gaussian, so the tilted
  mixture is again a mixture with re-weighted components.

Only κ = 1 (``pretrained_strength`` = 1, the plain reward-tilted prior) is supported: for κ ≠ 1
the prior's components would enter as powers of a *sum*, which is no longer a mixture.
All parameters are float64 so the analytic checks are not limited by float32 round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

_DTYPE = torch.float64


def _as_f64(values: Any) -> torch.Tensor:
    return torch.as_tensor(values, dtype=_DTYPE).clone()


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """p(x) = Σ_k π_k N(x; μ_k, σ_k² I) with K components in d dimensions.

    means: (K, d); stds: (K,) isotropic standard deviations; weights: (K,) summing to one.
    Parameters live on the CPU; densities and scores follow the device of the points given.
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        means, stds, weights = _as_f64(self.means), _as_f64(self.stds), _as_f64(self.weights)
        if means.ndim != 2 or stds.shape != means.shape[:1] or weights.shape != means.shape[:1]:
            raise ValueError(
                f"expected means (K, d), stds (K,), weights (K,); got {tuple(means.shape)}, "
                f"{tuple(stds.shape)}, {tuple(weights.shape)}"
            )
        if (stds <= 0).any() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("stds must be positive and weights non-negative")
        # frozen dataclass: bypass __setattr__ to store the validated, normalised copies
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "weights", weights / weights.sum())

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # -- sampling -----------------------------------------------------------------------------
    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples: draw a component k ~ π, then x = μ_k + σ_k ε. Returns (x, k)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=_DTYPE)
        x = self.means[component] + self.stds[component, None] * noise
        return x, component

    # -- densities ----------------------------------------------------------------------------
    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log π_k + log N(x; μ_k, σ_k² I) for every point and component: (N, K), float64."""
        x = x.to(_DTYPE)
        means, stds, weights = (v.to(x.device) for v in (self.means, self.stds, self.weights))
        # explicit differences, not cdist: cdist's matmul shortcut loses precision near a mean
        sq = (x[:, None, :] - means).square().sum(dim=-1)  # (N, K)
        var = stds.square()
        log_norm = -0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.log(weights) + log_norm - 0.5 * sq / var

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x of shape (N, d): (N,), float64."""
        return torch.logsumexp(self.component_log_probs(x), dim=-1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities p(k | x): (N, K), rows sum to one."""
        return torch.softmax(self.component_log_probs(x), dim=-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """∇_x log p(x) = Σ_k p(k|x) (μ_k − x) / σ_k², in x's dtype."""
        x64 = x.to(_DTYPE)
        resp = self.responsibilities(x64)
        # Σ_k r_k μ_k/σ_k² − x Σ_k r_k/σ_k²: avoids an (N, K, d) intermediate
        inv_var = 1.0 / self.stds.to(x.device).square()
        score = (resp * inv_var) @ self.means.to(x.device) - x64 * (resp @ inv_var)[:, None]
        return score.to(x.dtype)

    # -- transformations ----------------------------------------------------------------------
    def noised(self, alpha_bar: float | torch.Tensor) -> "GaussianMixture":
        """The law of √ᾱ x + √(1−ᾱ) ε for x ~ p: means √ᾱ μ_k, variances ᾱσ_k² + 1 − ᾱ."""
        a = float(alpha_bar)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha_bar must lie in [0, 1], got {a}")
        stds = torch.sqrt(a * self.stds.square() + (1.0 - a))
        return GaussianMixture(math.sqrt(a) * self.means, stds, self.weights)

    def posterior(self, x_t: torch.Tensor, alpha_bar: float) -> "GaussianMixture":
        """q(x_0 | x_t) for x_t = √ᾱ x_0 + √(1−ᾱ) ε, x_0 ~ p (one point x_t of shape (d,)).

        Per component (Gaussian prior × Gaussian likelihood): precision 1/σ_k² + ᾱ/(1−ᾱ), mean
        (μ_k/σ_k² + √ᾱ x_t/(1−ᾱ)) / precision, weight ∝ π_k N(x_t; √ᾱ μ_k, (ᾱσ_k² + 1−ᾱ) I).
        """
        a = float(alpha_bar)
        if not 0.0 < a < 1.0:
            raise ValueError(f"alpha_bar must lie in (0, 1), got {a}")
        x = x_t.to(_DTYPE).reshape(1, -1)
        var = self.stds.square()
        precision = 1.0 / var + a / (1.0 - a)
        means = (self.means / var[:, None] + math.sqrt(a) * x / (1.0 - a)) / precision[:, None]
        weights = torch.softmax(self.noised(a).component_log_probs(x)[0], dim=0)
        return GaussianMixture(means, torch.rsqrt(precision), weights)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, list]:
        """Plain lists, for JSON configs."""
        return {
            "means": self.means.tolist(),
            "stds": self.stds.tolist(),
            "weights": self.weights.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Sequence]) -> "GaussianMixture":
        return cls(data["means"], data["stds"], data["weights"])


DEFAULT_WEIGHTS = (0.08, 0.22, 0.06, 0.14, 0.10, 0.12, 0.10, 0.18)


def circle_mixture(
    k: int = 8,
    radius: float = 4.0,
    std: float = 0.5,
    weights: Sequence[float] | None = DEFAULT_WEIGHTS,
) -> GaussianMixture:
    """K equal-width Gaussians on a circle, component k at angle 2πk/K (counter-clockwise from +x).

    The default's unequal weights make mode-mass errors visible, which a uniform prior hides.
    ``weights=None`` gives uniform weights.
    """
    angles = 2 * math.pi * torch.arange(k, dtype=_DTYPE) / k
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    if weights is None:
        weights = [1.0 / k] * k
    if len(weights) != k:
        raise ValueError(f"{len(weights)} weights for {k} components")
    return GaussianMixture(means, torch.full((k,), float(std), dtype=_DTYPE), weights)


# -- rewards ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LinearReward:
    """r(x) = w · x."""

    w: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "w", _as_f64(self.w))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.to(x.device, x.dtype)


@dataclass(frozen=True, eq=False)
class QuadraticReward:
    """r(x) = −|x − c|² / 2."""

    center: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", _as_f64(self.center))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x - self.center.to(x.device, x.dtype)).square().sum(dim=-1)


Reward = LinearReward | QuadraticReward


def tilt_linear(mixture: GaussianMixture, w: Any, beta: float) -> GaussianMixture:
    """Exact p(x) ∝ p(x) exp(β w·x).

    Completing the square per component: the mean moves to μ_k + βσ_k² w, the std is kept,
    and the weight becomes ∝ π_k exp(β w·μ_k + β²σ_k²|w|²/2) (the component's normaliser).
    """
    w = _as_f64(w)
    var = mixture.stds.square()
    means = mixture.means + beta * var[:, None] * w
    # work in log space: β w·μ can be large, exp would overflow before normalising
    log_w = torch.log(mixture.weights) + beta * mixture.means @ w + 0.5 * beta**2 * var * w.dot(w)
    return GaussianMixture(means, mixture.stds, torch.softmax(log_w, dim=0))


def tilt_quadratic(mixture: GaussianMixture, center: Any, beta: float) -> GaussianMixture:
    """Exact p(x) ∝ p(x) exp(−β|x − c|²/2), β > 0.

    Each component becomes Gaussian with precision 1/σ_k² + β and mean
    (μ_k/σ_k² + βc)/(1/σ_k² + β); its weight is ∝ π_k N(c; μ_k, (σ_k² + 1/β) I), the overlap of
    the component with the reward's Gaussian N(c, I/β).
    """
    if beta <= 0:
        raise ValueError(f"the quadratic tilt needs beta > 0, got {beta}")
    c = _as_f64(center)
    var = mixture.stds.square()
    precision = 1.0 / var + beta
    means = (mixture.means / var[:, None] + beta * c) / precision[:, None]
    overlap = GaussianMixture(mixture.means, torch.sqrt(var + 1.0 / beta), mixture.weights)
    log_w = overlap.component_log_probs(c[None])[0]  # log π_k + log N(c; μ_k, ...)
    return GaussianMixture(means, torch.rsqrt(precision), torch.softmax(log_w, dim=0))


def tilt(
    mixture: GaussianMixture, reward: Reward, beta: float, pretrained_strength: float = 1.0
) -> GaussianMixture:
    """The exact target p(x) ∝ p#(x)^κ exp(β r(x)) for κ = ``pretrained_strength`` = 1 only."""
    if pretrained_strength != 1.0:
        raise NotImplementedError(
            "only pretrained_strength = 1 has a closed form (p#^κ of a mixture is not a mixture)"
        )
    if isinstance(reward, LinearReward):
        return tilt_linear(mixture, reward.w, beta)
    if isinstance(reward, QuadraticReward):
        return tilt_quadratic(mixture, reward.center, beta)
    raise TypeError(f"no closed-form tilt for {type(reward).__name__}")


def expected_reward(mixture: GaussianMixture, reward: Reward) -> float:
    """E_p[r(x)] in closed form: Σ_k π_k w·μ_k (linear), −½ Σ_k π_k (|μ_k − c|² + d σ_k²) (quadratic)."""
    if isinstance(reward, LinearReward):
        return float(mixture.weights @ (mixture.means @ reward.w))
    if isinstance(reward, QuadraticReward):
        spread = (mixture.means - reward.center).square().sum(dim=-1) + mixture.dim * mixture.stds.square()
        return float(-0.5 * mixture.weights @ spread)
    raise TypeError(f"no closed-form expectation for {type(reward).__name__}")


def start_tilted(mixture: GaussianMixture, reward: Reward | None, beta: float, alpha_bar_start: float,
                 nodes: int = 12) -> GaussianMixture:
    """The x_0 law of the prior's exact trajectory law from a N(0, I) start, tilted by exp(β r(x_0))
    with the start's law kept: x_T ~ N(0, I), then x_0 ~ q(x_0 | x_T)·exp(βr(x_0)) / Z(x_T).

    That is the optimum of every method whose target is P#(τ)·exp(βr(x_0)) on trajectories that
    start from N(0, I) (the start is not trained): p#·exp(βr) only if x_T were independent of x_0
    (ᾱ at the start = 0). ``reward`` None or β = 0: the exact prior sampler from that start. The
    integral over x_T is a tensor Gauss–Hermite rule of ``nodes`` per dimension, so the result is a
    mixture of nodes^d · K components (2-D: 144 · 8 at the default; the toy's distances agree to 10
    digits with 24 and 32 nodes).
    """
    import numpy as np  # the quadrature rule only

    points, weights = np.polynomial.hermite_e.hermegauss(nodes)  # ∫ f(x) exp(−x²/2) dx
    points, weights = torch.as_tensor(points, dtype=_DTYPE), torch.as_tensor(weights, dtype=_DTYPE)
    grid = torch.cartesian_prod(*[points] * mixture.dim).reshape(-1, mixture.dim)
    grid_weights = torch.cartesian_prod(*[weights] * mixture.dim).reshape(-1, mixture.dim).prod(dim=1)
    parts = []
    for x, w in zip(grid, grid_weights / grid_weights.sum()):
        conditional = mixture.posterior(x, alpha_bar_start)
        if reward is not None and beta:
            conditional = tilt(conditional, reward, beta)
        parts.append((conditional, w))
    return GaussianMixture(
        torch.cat([c.means for c, _ in parts]), torch.cat([c.stds for c, _ in parts]),
        torch.cat([w * c.weights for c, w in parts]),
    )


def reward_only_target(reward: Reward, beta: float) -> GaussianMixture:
    """The target exp(β r(x)) / Z with no prior (κ = 0).

    For the quadratic reward this is N(c, I/β), returned as a one-component mixture; a linear
    reward's exp(β w·x) is not normalisable, so it raises ValueError.
    """
    if isinstance(reward, QuadraticReward):
        if beta <= 0:
            raise ValueError(f"exp(β r) is normalisable only for beta > 0, got {beta}")
        return GaussianMixture(reward.center[None], [1.0 / math.sqrt(beta)], [1.0])
    if isinstance(reward, LinearReward):
        raise ValueError("exp(β w·x) is not normalisable: no reward-only target")
    raise TypeError(f"no closed-form reward-only target for {type(reward).__name__}")
