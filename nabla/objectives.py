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
(:mod:`nabla.flow`).

What training runs, in three steps (torchgfn's scores → loss):

1. the method computes every score of a batch once and names them in a ``BalanceTerms``;
2. ``residual_nabla_db_residuals`` (κ passed here) or ``nabla_db_residuals`` forms the
   residuals above with ``residual_forward``/``residual_reverse`` or
   ``nabla_db_forward``/``nabla_db_reverse``, masking the last transition's;
3. ``balance_losses`` only squares and reduces them per sample.

``residual_nabla_db_losses`` and ``nabla_db_losses`` are steps 2–3. The functions here never
reduce over the batch: residuals are per element, losses per sample ``(B,)``; the method chooses
the reduction. Nothing is detached except where a formula says stop-gradient (the terminal
forward target and the stored regularisation target); pass reward gradients and prior scores
without a graph.
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


class BalanceTerms(NamedTuple):
    """What the ∇-DB residuals of one batch of transitions ``x_t → x_prev`` are made of.

    Each tensor is ``(B, ...)``, shaped like ``x``, and carries a graph only where the loss trains
    through it: θ's scores, and g_φ's outputs. ``gamma_*`` are numbers or ``(B,)``.

    ``reward_grad_t=None`` marks a fusion that saves a pass: the reverse residual needs θ's reverse
    score only in the sum s_θ^rev + γ_t β ∇r(x_t), two gradients at x_t through the same denoiser
    forward, so one VJP gives it and ``score_theta_rev`` holds that sum (see ``reverse_flow_score``).
    """

    score_theta_fwd: torch.Tensor  # s_θ^fwd = ∇_{x_prev} log P_F^θ(x_prev | x_t)
    score_theta_rev: torch.Tensor  # s_θ^rev = ∇_{x_t} log P_F^θ(x_prev | x_t), or s_θ^rev + γ_t β ∇r(x_t)
    score_base_fwd: torch.Tensor  # residual ∇-DB: the prior's s_#^fwd; ∇-DB: ∇_{x_prev} log P_B
    score_base_rev: torch.Tensor  # residual ∇-DB: the prior's s_#^rev; ∇-DB: ∇_{x_t} log P_B
    flow_correction_prev: torch.Tensor  # g_φ(x_prev) (g_φ(x_0) on last transitions)
    flow_correction_t: torch.Tensor  # g_φ(x_t)
    reward_grad_prev: torch.Tensor  # ∇_{x_prev} r(decode(x̂_0(x_prev))) (∇r(x_0) on last transitions)
    reward_grad_t: Optional[torch.Tensor]  # ∇_{x_t} r(decode(x̂_0(x_t))); None: inside score_theta_rev
    gamma_prev: Scalar  # γ at x_prev (see ``gamma_schedule``)
    gamma_t: Scalar  # γ at x_t
    is_last: torch.Tensor  # (B,) bool: x_prev = x_0


class BalanceResiduals(NamedTuple):
    """Per-element residuals of one batch, each ``(B, ...)``: zero where a condition does not apply."""

    forward: torch.Tensor  # ∂D/∂x_prev
    reverse: torch.Tensor  # ∂D/∂x_t (0 on last transitions)
    terminal: torch.Tensor  # g_φ(x_0) (0 except on last transitions)


class NablaDBLosses(NamedTuple):
    """Per-sample losses of one batch of transitions, each ``(B,)``."""

    forward: torch.Tensor   # L_fwd
    reverse: torch.Tensor   # L_rev (0 on last transitions)
    terminal: torch.Tensor  # L_term (0 except on last transitions)

    def total(self, reverse_weight: float = 1.0) -> torch.Tensor:
        """L_fwd + w_B L_rev + L_term, per sample."""
        return self.forward + reverse_weight * self.reverse + self.terminal


def forward_flow_score(terms: BalanceTerms, beta: Scalar, terminal_gamma: Scalar = 1.0) -> torch.Tensor:
    """∇log F̃(x_prev): ``flow_score`` at x_prev, and on last transitions the exact terminal flow
    score γ_term β ∇r(x_0) (no g_φ, no graph: there the forward target is a constant for θ)."""
    last = _mask_like(terms.is_last, terms.score_theta_fwd)
    terminal = flow_score(torch.zeros_like(terms.reward_grad_prev), terms.reward_grad_prev, terminal_gamma, beta)
    inner = flow_score(terms.flow_correction_prev, terms.reward_grad_prev, terms.gamma_prev, beta)
    return torch.where(last, terminal.detach(), inner)


def reverse_flow_score(terms: BalanceTerms, beta: Scalar) -> torch.Tensor:
    """∇log F̃(x_t): ``flow_score`` at x_t; with the fusion (``reward_grad_t=None``) only g_φ(x_t),
    the reward part γ_t β ∇r(x_t) being inside ``score_theta_rev``."""
    if terms.reward_grad_t is None:
        return terms.flow_correction_t
    return flow_score(terms.flow_correction_t, terms.reward_grad_t, terms.gamma_t, beta)


def _terminal_constant(base_fwd: torch.Tensor, is_last: torch.Tensor) -> torch.Tensor:
    """The base forward score, cut from the graph on last transitions (part of a constant target)."""
    return torch.where(_mask_like(is_last, base_fwd), base_fwd.detach(), base_fwd)


def _masked(residual_fwd: torch.Tensor, residual_rev: torch.Tensor, terms: BalanceTerms) -> BalanceResiduals:
    """Reverse residuals only off the last transition, the terminal condition only on it.

    ``where``, not a product with the mask: masked samples give exactly 0, whatever was passed.
    """
    last = _mask_like(terms.is_last, residual_fwd)
    zero = torch.zeros((), dtype=residual_fwd.dtype, device=residual_fwd.device)
    return BalanceResiduals(
        forward=residual_fwd,
        reverse=torch.where(last, zero, residual_rev),
        terminal=torch.where(last, terms.flow_correction_prev, zero),
    )


def residual_nabla_db_residuals(
    terms: BalanceTerms, beta: Scalar, kappa: Scalar, terminal_gamma: Scalar = 1.0
) -> BalanceResiduals:
    """Residual ∇-DB's residuals of a batch (``terms.score_base_*`` are the prior's scores)::

        forward  = s_θ^fwd − (κ s_#^fwd + γ_prev β ∇r_prev + g_φ(x_prev))      (``residual_forward``)
        reverse  = s_θ^rev − (κ s_#^rev − γ_t β ∇r_t − g_φ(x_t))               (``residual_reverse``)

    and, where ``is_last`` (x_prev = x_0)::

        forward  = s_θ^fwd − sg(κ s_#^fwd + γ_term β ∇r(x_0))    (no g_φ; γ_term = 1)
        reverse  = 0
        terminal = g_φ(x_0)
    """
    forward = residual_forward(
        terms.score_theta_fwd, _terminal_constant(terms.score_base_fwd, terms.is_last),
        forward_flow_score(terms, beta, terminal_gamma), kappa,
    )
    reverse = residual_reverse(terms.score_theta_rev, terms.score_base_rev, reverse_flow_score(terms, beta), kappa)
    return _masked(forward, reverse, terms)


def nabla_db_residuals(terms: BalanceTerms, beta: Scalar, terminal_gamma: Scalar = 1.0) -> BalanceResiduals:
    """Plain ∇-DB's residuals (target exp(βr) alone; ``terms.score_base_*`` are P_B's scores,
    ``backward_scores``)::

        forward  = s_θ^fwd − (∇_{x_prev} log P_B + γ_prev β ∇r_prev + g_φ(x_prev))   (``nabla_db_forward``)
        reverse  = s_θ^rev − (∇_{x_t} log P_B − γ_t β ∇r_t − g_φ(x_t))              (``nabla_db_reverse``)

    with the same handling of last transitions as ``residual_nabla_db_residuals``.
    """
    forward = nabla_db_forward(
        terms.score_theta_fwd, _terminal_constant(terms.score_base_fwd, terms.is_last),
        forward_flow_score(terms, beta, terminal_gamma),
    )
    reverse = nabla_db_reverse(terms.score_theta_rev, terms.score_base_rev, reverse_flow_score(terms, beta))
    return _masked(forward, reverse, terms)


def balance_losses(
    residuals: BalanceResiduals, std: Optional[Scalar] = None, weighting: str = "score", reduction: str = "sum"
) -> NablaDBLosses:
    """Square and reduce: L_fwd = w‖forward‖², L_rev = w‖reverse‖², L_term = ‖terminal‖² (unweighted:
    not a transition), per sample. ``w`` is 1 (``"score"``) or σ_t² (``"sigma2"``, needs ``std``)."""
    return NablaDBLosses(
        forward=squared_norm(residuals.forward, std, weighting, reduction),
        reverse=squared_norm(residuals.reverse, std, weighting, reduction),
        terminal=terminal_flow_loss(residuals.terminal, reduction),
    )


def residual_nabla_db_losses(
    terms: BalanceTerms,
    beta: Scalar,
    kappa: Scalar,
    std: Optional[Scalar] = None,
    weighting: str = "score",
    terminal_gamma: Scalar = 1.0,
    reduction: str = "sum",
) -> NablaDBLosses:
    """Per-sample residual ∇-DB losses: ``balance_losses`` of ``residual_nabla_db_residuals``."""
    return balance_losses(residual_nabla_db_residuals(terms, beta, kappa, terminal_gamma), std, weighting, reduction)


def nabla_db_losses(
    terms: BalanceTerms,
    beta: Scalar,
    std: Optional[Scalar] = None,
    weighting: str = "score",
    terminal_gamma: Scalar = 1.0,
    reduction: str = "sum",
) -> NablaDBLosses:
    """Per-sample plain ∇-DB losses: ``balance_losses`` of ``nabla_db_residuals``."""
    return balance_losses(nabla_db_residuals(terms, beta, terminal_gamma), std, weighting, reduction)
