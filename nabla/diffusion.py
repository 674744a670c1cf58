r"""DDIM(η) transition kernels, their log-densities and their scores.

Conventions (those of diffusers): ``x_T`` is noise, ``x_0`` is clean, and one
sampling transition goes ``x_t → x_{t-1}``, written ``x_prev``. ``ᾱ`` is
``scheduler.alphas_cumprod``; on the last step (``t_prev < 0``) ``ᾱ_prev`` is
``scheduler.final_alpha_cumprod`` (``alphas_cumprod[0] < 1`` for Stable
Diffusion's ``set_alpha_to_one=False``, so the last σ is still > 0).

Model output → predicted clean sample and noise (exactly as
``DDIMScheduler.step``):

* ``"epsilon"``:      x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t,  ε̂ = output
* ``"v_prediction"``: x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v,      ε̂ = √ᾱ_t v + √(1−ᾱ_t) x_t
* ``"sample"``:       x̂_0 = output,                      ε̂ = (x_t − √ᾱ_t x̂_0) / √(1−ᾱ_t)

Forward policy (the sampler; η = 1 is the paper's "DDPM" sampler)::

    σ_t = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_prev)
    P_F(x_prev | x_t) = N(μ, σ_t² I),   μ = √ᾱ_prev x̂_0 + √(1−ᾱ_prev−σ_t²) ε̂

so ``ddim_mean(...) + σ_t · noise`` is ``DDIMScheduler.step(..., eta=η,
variance_noise=noise).prev_sample``.

Backward policy (the fixed noising kernel)::

    P_B(x_t | x_prev) = N(√(ᾱ_t/ᾱ_prev) x_prev, (1−ᾱ_t/ᾱ_prev) I)

Scores of log P_F:

* forward score  ∇_{x_prev} log P_F = −(x_prev − μ)/σ_t²  (closed form);
* reverse score  ∇_{x_t} log P_F = J_μ(x_t)ᵀ (x_prev − μ)/σ_t², since σ_t does
  not depend on x_t; computed as one vector-Jacobian product through the
  denoiser.

``alpha_bar`` / ``std`` / ``eta`` arguments may be Python floats, 0-d tensors
or per-sample tensors of shape ``(B,)``; they broadcast against ``x`` of shape
``(B, ...)``. Coefficients are formed in float64 and cast to ``x.dtype``, so
ᾱ arithmetic (e.g. ``1 − ᾱ_t/ᾱ_prev`` near the end of the chain) does not lose
precision in low-precision runs.

A deterministic transition (η = 0, or ᾱ_prev = 1 with
``set_alpha_to_one=True``) has σ = 0 and no density: the mean is still
defined, but the log-probabilities and scores raise ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Union

import torch

Scalar = Union[float, torch.Tensor]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# --------------------------------------------------------------------------- #
# Schedule
# --------------------------------------------------------------------------- #
def timestep_pairs(scheduler, num_inference_steps: int) -> list[tuple[int, int]]:
    """``(t, t_prev)`` for every sampling step, as ``DDIMScheduler.step`` pairs them.

    Calls ``scheduler.set_timesteps``. ``t_prev = t − num_train_timesteps //
    num_inference_steps`` (diffusers' rule, whatever the spacing), which is
    negative on the last step; ``alpha_bars`` maps that to
    ``final_alpha_cumprod``.
    """
    scheduler.set_timesteps(num_inference_steps)
    stride = scheduler.config.num_train_timesteps // num_inference_steps
    return [(int(t), int(t) - stride) for t in scheduler.timesteps]


def alpha_bars(scheduler, t: torch.Tensor, t_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ᾱ_t, ᾱ_prev)`` as float64 tensors shaped like ``t`` (on ``t``'s device).

    ``ᾱ_prev`` is ``scheduler.final_alpha_cumprod`` where ``t_prev < 0``.
    """
    t = torch.as_tensor(t)
    t_prev = torch.as_tensor(t_prev, device=t.device)
    table = scheduler.alphas_cumprod.to(device=t.device, dtype=torch.float64)
    final = torch.as_tensor(scheduler.final_alpha_cumprod).to(device=t.device, dtype=torch.float64)
    alpha_bar_t = table[t.long()]
    # Clamp before indexing so negative t_prev never wraps around the table.
    alpha_bar_prev = torch.where(t_prev >= 0, table[t_prev.long().clamp(min=0)], final)
    return alpha_bar_t, alpha_bar_prev.expand_as(alpha_bar_t)


# --------------------------------------------------------------------------- #
# Private helpers
# --------------------------------------------------------------------------- #
def _f64(value: Scalar, device=None) -> torch.Tensor:
    """``value`` as a float64 tensor (ᾱ arithmetic is done in float64)."""
    # a Python float straight to float64: through torch's default float32 it would lose 29 bits
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float64)
    return torch.tensor(value, device=device, dtype=torch.float64)


def _bcast(value: Scalar, x: torch.Tensor) -> torch.Tensor:
    """Float64 tensor of ``value`` shaped to broadcast against ``x`` of shape ``(B, ...)``.

    Accepts a scalar / 0-d tensor, a per-sample ``(B,)`` tensor, or a tensor
    that already has ``x.dim()`` dims.
    """
    v = _f64(value, x.device)
    if v.dim() == 0 or v.dim() == x.dim():
        return v
    if v.dim() == 1 and x.dim() >= 1 and v.shape[0] == x.shape[0]:
        return v.view(-1, *([1] * (x.dim() - 1)))
    raise ValueError(f"cannot broadcast a coefficient of shape {tuple(v.shape)} against x of shape {tuple(x.shape)}")


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _check_positive_std(std: torch.Tensor) -> None:
    # One host sync; the alternative is silently returning inf/NaN densities.
    if bool((std <= 0).any()):
        raise ValueError(
            "std must be > 0: a zero-variance transition (η=0, or ᾱ_prev=1 with set_alpha_to_one=True) "
            "is deterministic and has no density"
        )


def _reduce(elementwise: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum or mean over all non-batch dims."""
    dims = tuple(range(1, elementwise.dim()))
    if not dims:
        return elementwise
    if reduction == "sum":
        return elementwise.sum(dim=dims)
    if reduction == "mean":
        return elementwise.mean(dim=dims)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


# --------------------------------------------------------------------------- #
# Model output → x̂_0, ε̂
# --------------------------------------------------------------------------- #
def predict_x0(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: Scalar, prediction_type: str) -> torch.Tensor:
    """Predicted clean sample x̂_0 from the denoiser output at ``x_t``."""
    _check_prediction_type(prediction_type)
    a = _bcast(alpha_bar_t, x_t)
    sqrt_a, sqrt_b = a.sqrt().to(x_t.dtype), (1 - a).sqrt().to(x_t.dtype)
    if prediction_type == "epsilon":
        return (x_t - sqrt_b * model_output) / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a * x_t - sqrt_b * model_output
    return model_output


def predict_epsilon(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: Scalar, prediction_type: str) -> torch.Tensor:
    """Predicted noise ε̂ from the denoiser output at ``x_t`` (diffusers' derivation)."""
    _check_prediction_type(prediction_type)
    a = _bcast(alpha_bar_t, x_t)
    sqrt_a, sqrt_b = a.sqrt().to(x_t.dtype), (1 - a).sqrt().to(x_t.dtype)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return sqrt_a * model_output + sqrt_b * x_t
    # "sample": the noise implied by x_t = √ᾱ x̂_0 + √(1−ᾱ) ε̂.
    return (x_t - sqrt_a * model_output) / sqrt_b


# --------------------------------------------------------------------------- #
# Forward policy P_F(x_prev | x_t)
# --------------------------------------------------------------------------- #
def ddim_std(alpha_bar_t: Scalar, alpha_bar_prev: Scalar, eta: Scalar) -> torch.Tensor:
    """σ_t = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_prev), as float64 (broadcast of the inputs).

    Exactly 0 for η = 0 and for ᾱ_prev = 1 (never NaN).
    """
    a_prev = _f64(alpha_bar_prev)
    a_t, eta = _f64(alpha_bar_t, a_prev.device), _f64(eta, a_prev.device)
    # The clamps only guard rounding (ratio marginally above 1) and the
    # degenerate ᾱ_t = 1, where the numerator is 0 too.
    variance = (1 - a_prev) * (1 - a_t / a_prev).clamp(min=0) / (1 - a_t).clamp(min=torch.finfo(torch.float64).tiny)
    return eta * variance.sqrt()


def ddim_mean(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar_t: Scalar,
    alpha_bar_prev: Scalar,
    eta: Scalar,
    prediction_type: str,
) -> torch.Tensor:
    """μ = √ᾱ_prev x̂_0 + √(1−ᾱ_prev−σ_t²) ε̂, the mean of P_F (never divides by σ)."""
    x0 = predict_x0(model_output, x_t, alpha_bar_t, prediction_type)
    eps = predict_epsilon(model_output, x_t, alpha_bar_t, prediction_type)
    a_prev = _bcast(alpha_bar_prev, x_t)
    std = ddim_std(_bcast(alpha_bar_t, x_t), a_prev, _bcast(eta, x_t))
    # 1−ᾱ_prev−σ² ≥ 0 for η ≤ 1; clamp only absorbs rounding at η = 1.
    c_dir = (1 - a_prev - std**2).clamp(min=0).sqrt().to(x_t.dtype)
    return a_prev.sqrt().to(x_t.dtype) * x0 + c_dir * eps


def step_coefficients(alpha_bar_t: float, alpha_bar_prev: float, eta: float, prediction_type: str) -> tuple[float, float, float]:
    """(c_x, c_out, σ_t) of one step whose every sample has the same t: μ = c_x x_t + c_out · output.

    x̂_0 and ε̂ are both linear in (x_t, output) for every prediction type, hence so is μ; the
    sampler applies the step in two operations instead of ``ddim_mean``'s per-sample arithmetic
    (the same μ, to float rounding; a test keeps them equal).
    """
    _check_prediction_type(prediction_type)
    a, ap = float(alpha_bar_t), float(alpha_bar_prev)
    std = float(ddim_std(a, ap, eta))
    c_dir = math.sqrt(max(0.0, 1 - ap - std**2))
    # (x̂_0, ε̂) = (x0_x x_t + x0_out out, eps_x x_t + eps_out out)
    if prediction_type == "epsilon":
        x0_x, x0_out, eps_x, eps_out = 1 / math.sqrt(a), -math.sqrt(1 - a) / math.sqrt(a), 0.0, 1.0
    elif prediction_type == "v_prediction":
        x0_x, x0_out, eps_x, eps_out = math.sqrt(a), -math.sqrt(1 - a), math.sqrt(1 - a), math.sqrt(a)
    else:
        x0_x, x0_out, eps_x, eps_out = 0.0, 1.0, 1 / math.sqrt(1 - a), -math.sqrt(a) / math.sqrt(1 - a)
    sqrt_ap = math.sqrt(ap)
    return sqrt_ap * x0_x + c_dir * eps_x, sqrt_ap * x0_out + c_dir * eps_out, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: Scalar, reduction: str = "sum") -> torch.Tensor:
    """Per-sample log N(x; mean, std² I), summed or averaged over the non-batch dims."""
    s = _bcast(std, x)
    _check_positive_std(s)
    z = (x - mean) / s.to(x.dtype)
    elementwise = -0.5 * z**2 - (s.log() + 0.5 * math.log(2 * math.pi)).to(x.dtype)
    return _reduce(elementwise, reduction)


def gaussian_kl(mean: torch.Tensor, other_mean: torch.Tensor, std: Scalar, reduction: str = "sum") -> torch.Tensor:
    """Per-sample KL(N(mean, σ²I) ‖ N(other_mean, σ²I)) = Σ (mean − other_mean)²/(2σ²), summed or
    averaged over the non-batch dims (two kernels of one step share σ_t)."""
    s = _bcast(std, mean)
    _check_positive_std(s)
    return _reduce((mean - other_mean).square() / (2 * s.square()).to(mean.dtype), reduction)


def standard_normal_log_prob(noise: torch.Tensor, std: float) -> torch.Tensor:
    """log N(μ + σ·noise; μ, σ² I) per sample, averaged over the non-batch dims: the density of a
    sampled transition from its own noise (``gaussian_log_prob(..., reduction="mean")`` of it)."""
    if std <= 0:
        raise ValueError("std must be > 0: a deterministic transition has no density")
    return _reduce(-0.5 * noise.square(), "mean") - (math.log(std) + 0.5 * math.log(2 * math.pi))


def forward_score(x_prev: torch.Tensor, mean: torch.Tensor, std: Scalar) -> torch.Tensor:
    """∇_{x_prev} log P_F(x_prev | x_t) = −(x_prev − μ)/σ²."""
    s = _bcast(std, x_prev)
    _check_positive_std(s)
    return -(x_prev - mean) / (s**2).to(x_prev.dtype)


def reverse_score(
    x_t: torch.Tensor,
    x_prev: torch.Tensor,
    mean: torch.Tensor,
    std: Scalar,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> torch.Tensor:
    """∇_{x_t} log P_F(x_prev | x_t) = J_μ(x_t)ᵀ (x_prev − μ(x_t))/σ², one VJP through μ.

    ``mean`` is μ(x_t) computed with a graph from ``x_t`` (typically ``ddim_mean`` around the
    denoiser), so one denoiser forward can serve the forward score, the reverse score and a
    reward gradient; pass ``retain_graph=True`` when that graph is used again afterwards.
    Per-sample scores assume the denoiser treats batch elements independently.

    With ``create_graph=True`` the result stays differentiable, including through
    ``(x_prev − μ)/σ²``, so a loss on it backpropagates into the denoiser's parameters;
    otherwise it carries no graph.
    """
    s = _bcast(std, x_t)
    _check_positive_std(s)
    # grad_outputs is the Gaussian's score in μ; not detached, so that with
    # create_graph the result's dependence on μ through it is kept too.
    v = (x_prev - mean) / (s**2).to(mean.dtype)
    (score,) = torch.autograd.grad(
        mean, x_t, grad_outputs=v, create_graph=create_graph, retain_graph=retain_graph
    )
    return score


# --------------------------------------------------------------------------- #
# Backward policy P_B(x_t | x_prev)
# --------------------------------------------------------------------------- #
def backward_log_prob(
    x_t: torch.Tensor,
    x_prev: torch.Tensor,
    alpha_bar_t: Scalar,
    alpha_bar_prev: Scalar,
    reduction: str = "sum",
) -> torch.Tensor:
    """log P_B(x_t | x_prev) = log N(x_t; √(ᾱ_t/ᾱ_prev) x_prev, (1−ᾱ_t/ᾱ_prev) I), per sample."""
    ratio = _bcast(alpha_bar_t, x_t) / _bcast(alpha_bar_prev, x_t)
    mean = ratio.sqrt().to(x_t.dtype) * x_prev
    return gaussian_log_prob(x_t, mean, (1 - ratio).clamp(min=0).sqrt(), reduction)
