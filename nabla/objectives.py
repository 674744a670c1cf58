r"""∇-DB and residual ∇-DB: balance residuals and per-sample losses as pure tensor functions.

Conventions are those of :mod:`nabla.diffusion`: one sampling transition goes ``x_t → x_prev``
(``x_prev = x_{t-1}``; on the last transition ``x_prev = x_0``), θ is the fine-tuned denoiser,
# the frozen pretrained prior (same sampler). Scores (all shaped like ``x``, ``(B, ...)``)::

    s^fwd = ∇_{x_prev} log P_F(x_prev | x_t)      s^rev = ∇_{x_t} log P_F(x_prev | x_t)

Detailed balance (DB) for one transition, written as a scalar condition::

    D(x_t, x_prev) = log F(x_t) + log P_F(x_prev | x_t) − log F(x_prev) − log P_B(x_t | x_prev) = 0

**∇-DB** asks for ``∂D/∂x_prev = 0`` (forward) and ``∂D/∂x_t = 0`` (reverse), whose residuals are
exactly those two gradients::

    forward:  s_θ^fwd − (∇_{x_prev} log P_B + ∇log F(x_prev))
    reverse:  s_θ^rev − (∇_{x_t} log P_B − ∇log F(x_t))

**Residual ∇-DB** subtracts the same conditions written for the prior (scaled by κ), so that the
fine-tuned sampler targets ``p#(x_0)^κ exp(β r(x_0))`` with the residual flow ``F̃ = F/F#``::

    forward:  s_θ^fwd − (κ s_#^fwd + ∇log F̃(x_prev))
    reverse:  s_θ^rev − (κ s_#^rev − ∇log F̃(x_t))
    terminal: log F̃(x_0) = β r(x_0)

For κ = 1 these are exactly ``∂(D_θ − D_#)/∂x`` (P_B cancels). For κ ≠ 1 the exact difference
``D_θ − κ D_#`` would keep ``−(1−κ) ∇log P_B``; like the paper, κ is used as a prior-strength
knob and that term is dropped.

The flow score is parameterised "forward-looking"::

    ∇log F̃(x_t) ≈ γ_t β ∇_{x_t} r(decode(x̂_0^θ(x_t))) + g_φ(x_t, t, c)

(``flow_score``), where ``g_φ`` is a network whose output starts at zero
(:mod:`nabla.flow`). The functions here never reduce over the batch: residuals are per element,
losses per sample ``(B,)``; the method chooses the reduction. Nothing is detached except where a
formula says stop-gradient (the terminal forward target and the stored regularisation target);
pass reward gradients and prior scores without a graph.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

Scalar = Union[float, torch.Tensor]

GAMMA_MODES = ("squared", "sqrt")
WEIGHTINGS = ("score", "sigma2")


# --------------------------------------------------------------------------- #
# Private helpers
# --------------------------------------------------------------------------- #
def _per_sample(value: Scalar, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` (Python number, 0-d or ``(B,)`` tensor) shaped to broadcast against ``like``."""
    v = torch.as_tensor(value, device=like.device)
    v = v.to(dtype or like.dtype)
    if v.dim() == 0 or v.dim() == like.dim():
        return v
    if v.dim() == 1 and v.shape[0] == like.shape[0]:
        return v.view(-1, *([1] * (like.dim() - 1)))
    raise ValueError(f"cannot broadcast a value of shape {tuple(v.shape)} against a tensor of shape {tuple(like.shape)}")


def _mask_like(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B,)`` mask viewed as ``(B, 1, ...)`` to select elements of ``like``."""
    mask = torch.as_tensor(mask, device=like.device, dtype=torch.bool)
    if mask.dim() != 1 or mask.shape[0] != like.shape[0]:
        raise ValueError(f"terminal mask must have shape ({like.shape[0]},), got {tuple(mask.shape)}")
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _sum_over_sample(elementwise: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum or mean over every non-batch dim: ``(B, ...) → (B,)``."""
    dims = tuple(range(1, elementwise.dim()))
    if reduction == "sum":
        return elementwise.sum(dim=dims) if dims else elementwise
    if reduction == "mean":
        return elementwise.mean(dim=dims) if dims else elementwise
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


# --------------------------------------------------------------------------- #
# Flow score
# --------------------------------------------------------------------------- #
def gamma_schedule(alpha_bar: Scalar, mode: str = "squared") -> torch.Tensor:
    """Weight γ_t of the forward-looking reward term.

    * ``"squared"``: γ_t = ᾱ_t  (= (√ᾱ_t)²; the default)
    * ``"sqrt"``:    γ_t = √ᾱ_t

    Both go to 1 as t → 0 (clean data, where the flow score is exactly β∇r) and to 0 at
    pure noise, where x̂_0 and hence its reward gradient carry little information.
    Returns a tensor shaped like ``alpha_bar`` (float64 for Python numbers).
    """
    a = torch.as_tensor(alpha_bar)
    if not a.is_floating_point():
        a = a.to(torch.float64)
    if mode == "squared":
        return a
    if mode == "sqrt":
        return a.sqrt()
    raise ValueError(f"gamma mode must be one of {GAMMA_MODES}, got {mode!r}")


def flow_score(flow_correction: torch.Tensor, reward_grad: torch.Tensor, gamma: Scalar, beta: Scalar) -> torch.Tensor:
    """Forward-looking flow score ∇log F̃(x_t) ≈ γ_t β ∇_{x_t} r(decode(x̂_0(x_t))) + g_φ(x_t).

    ``flow_correction`` is g_φ(x_t, t, c) and ``reward_grad`` is ∇_{x_t} r(...), both ``(B, ...)``;
    ``gamma`` is a number or per-sample ``(B,)`` (see ``gamma_schedule``), ``beta`` the reward scale.
    """
    return _per_sample(gamma, reward_grad) * _per_sample(beta, reward_grad) * reward_grad + flow_correction


# --------------------------------------------------------------------------- #
# Backward policy scores
# --------------------------------------------------------------------------- #
def backward_scores(
    x_t: torch.Tensor, x_prev: torch.Tensor, alpha_bar_t: Scalar, alpha_bar_prev: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients of log P_B(x_t | x_prev) = log N(x_t; √ρ x_prev, (1−ρ) I), ρ = ᾱ_t/ᾱ_prev.

    With the standardised residual u = (x_t − √ρ x_prev)/(1−ρ)::

        ∇_{x_prev} log P_B =  √ρ u
        ∇_{x_t}    log P_B = −u

    Returns ``(grad wrt x_prev, grad wrt x_t)``. ``alpha_bar_*`` are numbers or ``(B,)``; the
    coefficients are formed in float64 (1 − ρ is small near the end of the chain).
    """
    ratio = _per_sample(alpha_bar_t, x_t, torch.float64) / _per_sample(alpha_bar_prev, x_t, torch.float64)
    variance = 1 - ratio
    if bool((variance <= 0).any()):
        raise ValueError("P_B needs ᾱ_t < ᾱ_prev: a zero-variance backward kernel has no score")
    u = (x_t - ratio.sqrt().to(x_t.dtype) * x_prev) / variance.to(x_t.dtype)
    return ratio.sqrt().to(x_t.dtype) * u, -u


# --------------------------------------------------------------------------- #
# Residuals (per element, shaped like x)
# --------------------------------------------------------------------------- #
def residual_forward(
    score_theta_fwd: torch.Tensor, score_prior_fwd: torch.Tensor, flow_score_prev: torch.Tensor, kappa: Scalar = 1.0
) -> torch.Tensor:
    """Residual ∇-DB, forward: s_θ^fwd − (κ s_#^fwd + ∇log F̃(x_prev))."""
    return score_theta_fwd - (_per_sample(kappa, score_prior_fwd) * score_prior_fwd + flow_score_prev)


def residual_reverse(
    score_theta_rev: torch.Tensor, score_prior_rev: torch.Tensor, flow_score_t: torch.Tensor, kappa: Scalar = 1.0
) -> torch.Tensor:
    """Residual ∇-DB, reverse: s_θ^rev − (κ s_#^rev − ∇log F̃(x_t))."""
    return score_theta_rev - (_per_sample(kappa, score_prior_rev) * score_prior_rev - flow_score_t)


def nabla_db_forward(score_theta_fwd: torch.Tensor, pb_score_prev: torch.Tensor, flow_score_prev: torch.Tensor) -> torch.Tensor:
    """∇-DB, forward: s_θ^fwd − (∇_{x_prev} log P_B(x_t|x_prev) + ∇log F(x_prev)) = ∂D/∂x_prev."""
    return score_theta_fwd - (pb_score_prev + flow_score_prev)


def nabla_db_reverse(score_theta_rev: torch.Tensor, pb_score_t: torch.Tensor, flow_score_t: torch.Tensor) -> torch.Tensor:
    """∇-DB, reverse: s_θ^rev − (∇_{x_t} log P_B(x_t|x_prev) − ∇log F(x_t)) = ∂D/∂x_t."""
    return score_theta_rev - (pb_score_t - flow_score_t)


# --------------------------------------------------------------------------- #
# Per-sample losses (B,)
# --------------------------------------------------------------------------- #
def squared_norm(
    residual: torch.Tensor,
    std: Optional[Scalar] = None,
    weighting: str = "score",
    reduction: str = "sum",
) -> torch.Tensor:
    """Per-sample ‖residual‖², summed (or averaged) over the non-batch dims: ``(B, ...) → (B,)``.

    * ``"score"``:  ‖Δs‖², the squared score residual (the official release's loss);
    * ``"sigma2"``: σ_t² ‖Δs‖². For the forward score of two Gaussian kernels with the same σ_t,
      Δs = Δμ/σ_t², so this is ‖Δμ‖²/σ_t² = 2 KL(N(μ₁,σ_t²) ‖ N(μ₂,σ_t²)): it stops the small-σ
      steps at the end of the chain from dominating. Needs ``std`` (σ_t, number or ``(B,)``).
    """
    norm = _sum_over_sample(residual.pow(2), reduction)
    if weighting == "score":
        return norm
    if weighting == "sigma2":
        if std is None:
            raise ValueError("weighting='sigma2' needs the per-sample std σ_t")
        return norm * _per_sample(std, norm).pow(2)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def terminal_flow_loss(flow_correction_x0: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """L_term = ‖g_φ(x_0)‖²: at x_0 the flow score must be exactly β∇r, so the correction is 0."""
    return _sum_over_sample(flow_correction_x0.pow(2), reduction)


def output_regularizer(model_out: torch.Tensor, model_out_old: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """‖ε̂_θ(x_t) − sg(ε̂_old(x_t))‖² per sample; ε̂_old was stored at sampling time (the caller scales by λ)."""
    return _sum_over_sample((model_out - model_out_old.detach()).pow(2), reduction)


class NablaDBLosses(NamedTuple):
    """Per-sample losses of one batch of transitions, each ``(B,)``."""

    forward: torch.Tensor   # L_fwd
    reverse: torch.Tensor   # L_rev (0 on last transitions)
    terminal: torch.Tensor  # L_term (0 except on last transitions)

    def total(self, reverse_weight: float = 1.0) -> torch.Tensor:
        """L_fwd + w_B L_rev + L_term, per sample."""
        return self.forward + reverse_weight * self.reverse + self.terminal


def _assemble(
    score_theta_fwd: torch.Tensor,
    score_theta_rev: torch.Tensor,
    base_fwd: torch.Tensor,
    base_rev: torch.Tensor,
    flow_correction_prev: torch.Tensor,
    flow_correction_t: torch.Tensor,
    reward_grad_prev: torch.Tensor,
    reward_grad_t: torch.Tensor,
    gamma_prev: Scalar,
    gamma_t: Scalar,
    beta: Scalar,
    is_last: torch.Tensor,
    std: Optional[Scalar],
    weighting: str,
    terminal_gamma: Scalar,
    reduction: str = "sum",
) -> NablaDBLosses:
    """Shared by both objectives: targets are ``base_fwd + ∇log F(x_prev)`` and ``base_rev − ∇log F(x_t)``."""
    last = _mask_like(is_last, score_theta_fwd)
    # Last transition: x_prev = x_0, whose flow score is known exactly (β∇r), so g_φ is left out
    # and the target is a constant for θ.
    target_fwd = torch.where(
        last,
        (base_fwd + flow_score(torch.zeros_like(reward_grad_prev), reward_grad_prev, terminal_gamma, beta)).detach(),
        base_fwd + flow_score(flow_correction_prev, reward_grad_prev, gamma_prev, beta),
    )
    target_rev = base_rev - flow_score(flow_correction_t, reward_grad_t, gamma_t, beta)

    loss_fwd = squared_norm(score_theta_fwd - target_fwd, std, weighting, reduction)
    loss_rev = squared_norm(score_theta_rev - target_rev, std, weighting, reduction)
    # where, not a product with the mask: masked samples give exactly 0, whatever was passed for them.
    mask = last.reshape(-1)
    zero = torch.zeros_like(loss_fwd)
    return NablaDBLosses(
        forward=loss_fwd,
        reverse=torch.where(mask, zero, loss_rev),
        terminal=torch.where(mask, terminal_flow_loss(flow_correction_prev, reduction), zero),
    )


def residual_nabla_db_losses(
    score_theta_fwd: torch.Tensor,
    score_prior_fwd: torch.Tensor,
    score_theta_rev: torch.Tensor,
    score_prior_rev: torch.Tensor,
    flow_correction_prev: torch.Tensor,
    flow_correction_t: torch.Tensor,
    reward_grad_prev: torch.Tensor,
    reward_grad_t: torch.Tensor,
    gamma_prev: Scalar,
    gamma_t: Scalar,
    beta: Scalar,
    kappa: Scalar,
    is_last: torch.Tensor,
    std: Optional[Scalar] = None,
    weighting: str = "score",
    terminal_gamma: Scalar = 1.0,
    reduction: str = "sum",
) -> NablaDBLosses:
    """Per-sample residual ∇-DB losses for a batch of transitions ``x_t → x_prev``.

    With the flow score F̃'(x) = γ β ∇r(x) + g_φ(x) (``flow_score``)::

        L_fwd  = w ‖s_θ^fwd − (κ s_#^fwd + γ_prev β ∇r_prev + g_φ(x_prev))‖²
        L_rev  = w ‖s_θ^rev − (κ s_#^rev − γ_t β ∇r_t − g_φ(x_t))‖²
        L_term = 0

    and, where ``is_last`` (x_prev = x_0)::

        L_fwd  = w ‖s_θ^fwd − sg(κ s_#^fwd + γ_term β ∇r(x_0))‖²   (no g_φ; γ_term = 1)
        L_rev  = 0
        L_term = ‖g_φ(x_0)‖²                                         (unweighted)

    ``w`` is 1 (``weighting="score"``) or σ_t² (``"sigma2"``, needs ``std``). ``flow_correction_prev``
    is g_φ evaluated at x_prev (at x_0 on last transitions), ``reward_grad_prev`` the reward
    gradient there (∇r(x_0) on last transitions). ``gamma_*``, ``beta``, ``kappa``, ``std``: numbers
    or ``(B,)``; ``is_last``: ``(B,)`` bool.
    """
    return _assemble(
        score_theta_fwd, score_theta_rev,
        _per_sample(kappa, score_prior_fwd) * score_prior_fwd, _per_sample(kappa, score_prior_rev) * score_prior_rev,
        flow_correction_prev, flow_correction_t, reward_grad_prev, reward_grad_t,
        gamma_prev, gamma_t, beta, is_last, std, weighting, terminal_gamma, reduction,
    )


def nabla_db_losses(
    score_theta_fwd: torch.Tensor,
    pb_score_prev: torch.Tensor,
    score_theta_rev: torch.Tensor,
    pb_score_t: torch.Tensor,
    flow_correction_prev: torch.Tensor,
    flow_correction_t: torch.Tensor,
    reward_grad_prev: torch.Tensor,
    reward_grad_t: torch.Tensor,
    gamma_prev: Scalar,
    gamma_t: Scalar,
    beta: Scalar,
    is_last: torch.Tensor,
    std: Optional[Scalar] = None,
    weighting: str = "score",
    terminal_gamma: Scalar = 1.0,
    reduction: str = "sum",
) -> NablaDBLosses:
    """Per-sample plain ∇-DB losses (target exp(βr) alone): ``residual_nabla_db_losses`` with the
    P_B scores (``backward_scores``) in place of κ × the prior's::

        L_fwd = w ‖s_θ^fwd − (∇_{x_prev} log P_B + γ_prev β ∇r_prev + g_φ(x_prev))‖²
        L_rev = w ‖s_θ^rev − (∇_{x_t} log P_B − γ_t β ∇r_t − g_φ(x_t))‖²

    and the same handling of last transitions (forward target sg(∇_{x_0} log P_B + β∇r(x_0))
    without g_φ, L_rev = 0, L_term = ‖g_φ(x_0)‖²).
    """
    return _assemble(
        score_theta_fwd, score_theta_rev, pb_score_prev, pb_score_t,
        flow_correction_prev, flow_correction_t, reward_grad_prev, reward_grad_t,
        gamma_prev, gamma_t, beta, is_last, std, weighting, terminal_gamma, reduction,
    )
