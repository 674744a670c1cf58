r"""DPOK (Fan et al., NeurIPS 2023): policy gradient on the reward with a KL to the prior.

Notation: ρ the reward weight, α the KL weight, D the dimensions of a sample, ℓ_s = log P_F^θ −
log P_F^# of transition s summed over dimensions, V_φ(x_t, t, c) a learned value (baseline).

Per sampled transition x_t → x_prev of a trajectory with terminal reward r:

1. the return R_t: the reward r (``kl_in_return=False``, as published), or the KL-regularised
   return to go r − (α/ρ) Σ_{s ≥ t} ℓ_s (``kl_in_return=True``);
2. the advantage A = R_t − V_φ(x_t, t, c), without gradient;
3. the ratio ρ_θ = exp(log π_θ − log π_old) of the per-dimension-mean log-probabilities,
   *clamped* to [1 − ε, 1 + ε] (the release clamps; it does not take PPO's min, so a ratio outside
   the range carries no gradient);
4. the loss −ρ·A·ρ_θ + α·KL_t + (V_φ − R_t)², the KL term only when published:
   KL_t = mean over dimensions of ‖μ_θ − μ#‖²/(2σ_t²) (the Gaussian kernels' KL / D, ``kl_form:
   gaussian``, the paper's formula) or of (ε̂_θ − ε̂#)² (``kl_form: epsilon``, the release's code).

Targets. E[ρ r] − α KL(p_θ ‖ p#) over whole trajectories is maximised by the tilt p#·exp(βr) with
β = ρ/α. As published, the KL gradient is taken at the sampled states only, ignoring how θ moves
them, so DPOK reaches that tilt only approximately (and with the ε-space KL, whose weight per step
differs by 2σ_t²/c_t², not even in principle). With ``kl_in_return`` the policy gradient of the
regularised return is the exact gradient of that objective (the score-function identity makes
E[∇ℓ_s] = 0), and the optimum is the tilt.

Defaults from the release (google-research ``dpok/train_online_pg.py``): ``ratio_clip`` 1e-4,
``kl_weight`` 0.01, ``reward_weight`` 100, ``p_step`` 5 optimiser steps per sampling iteration;
the value net trained by MSE to the final reward at ``v_lr`` 1e-4 (config: ``flow_lr``).
Deviations (config/README.md): the round's own trajectories replace the release's buffer of the
newest 1000 transitions; 40 % of each trajectory's transitions are trained per round, the
release's ratio (5 steps × 24 transitions of 6 × 50 sampled); V_φ is the same scalar network as
DB-GFlowNet's log-flow, trained in the policy's updates instead of in separate value steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines.db_gflownet import build_scalar_network
from nabla import diffusion
from nabla.methods import LossOutput, Method, Rollouts, Transitions, pair_plan, register_method, shuffled_transition_pairs

KL_FORMS = ("gaussian", "epsilon")


@dataclass
class DPOKOptions:
    """DPOK's options; defaults are the release's (google-research dpok/), sources in config/README.md.

    Args:
        reward_weight: ρ (release --reward_weight).
        kl_weight: α (release --kl_weight); the target's β = ρ/α.
        kl_form: "gaussian", the paper's Gaussian KL, or "epsilon": the release's ‖ε̂_θ − ε̂#‖².
        kl_in_return: True: −(α/ρ) Σ ℓ_s in the return instead of the KL term (the exact tilt).
        ratio_clip: ε (release --ratio_clip).
        transition_fraction: the share of each trajectory's transitions trained per round.
        updates_per_round: optimiser steps per sampling round (release --p_step).
        microbatch_size: transitions per forward pass (gradient accumulation beyond).
        value_conditioned: V_φ sees the prompt (image scales).
        value_channels: V_φ's CNN widths at the image scales.
        value_hidden: V_φ's MLP width for points.
    """

    reward_weight: float = 100.0
    kl_weight: float = 0.01
    kl_form: str = "gaussian"
    kl_in_return: bool = False
    ratio_clip: float = 1e-4
    transition_fraction: float = 0.4
    updates_per_round: int = 5
    microbatch_size: int = 32
    value_conditioned: bool = True
    value_channels: tuple[int, ...] = (32, 64)
    value_hidden: int = 128

    def __post_init__(self):
        if self.kl_form not in KL_FORMS:
            raise ValueError(f"kl_form must be one of {KL_FORMS}, got {self.kl_form!r}")
        if self.kl_weight <= 0 or self.reward_weight <= 0:
            raise ValueError("reward_weight and kl_weight must be positive (the target's β is their ratio)")
        if not 0 < self.transition_fraction <= 1:
            raise ValueError(f"transition_fraction must be in (0, 1], got {self.transition_fraction}")


# -- pure pieces ----------------------------------------------------------------------------------
def returns_to_go(rewards: torch.Tensor, log_ratios: torch.Tensor, beta: float | None) -> torch.Tensor:
    """(T, B) returns of every step: r, or with ``beta`` r − (1/β) Σ_{s ≥ t} ℓ_s (ℓ: (T, B))."""
    if beta is None:
        return rewards.expand_as(log_ratios)
    to_go = log_ratios.flip(0).cumsum(0).flip(0)
    return rewards - to_go / beta


def clamped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip: float) -> torch.Tensor:
    """Per transition −A·clamp(exp(log π − log π_old), 1 − ε, 1 + ε) (the release's surrogate)."""
    return -advantages * torch.exp(log_prob - old_log_prob).clamp(1 - clip, 1 + clip)


# -- the method -----------------------------------------------------------------------------------
@dataclass
class ReturnTransitions:
    """A micro-batch of transitions and the return R_t of each."""

    transitions: Transitions
    returns: torch.Tensor


@register_method
class DPOK(Method):
    """DPOK: clamped-ratio policy gradient with a value baseline and a KL to the prior."""

    name = "dpok"
    label, color = "DPOK", "#17becf"  # in tables and figures
    Options = DPOKOptions
    target = "tilted"
    needs_stochastic_sampler = True

    @classmethod
    def target_beta(cls, options, sample_shape) -> float | None:
        """ρ/α for the Gaussian KL (the ε-space KL weighs the steps unlike any tilt: None)."""
        if options.kl_form == "epsilon" and not options.kl_in_return:
            return None
        return options.reward_weight / options.kl_weight

    def __init__(self, options, backend, reward, sampler, total_rounds: int = 1):
        super().__init__(options, backend, reward, sampler, total_rounds)
        self.value = build_scalar_network(backend, options.value_conditioned, options.value_channels,
                                          options.value_hidden)

    def modules(self):
        return {"value": self.value}

    def collect(self, prompts, seeds) -> Rollouts:
        batch = super().collect(prompts, seeds)
        if self.options.kl_in_return:
            batch.extras["log_ratios"] = self.prior_log_ratios(batch)
        return batch

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[ReturnTransitions]]:
        o = self.options
        beta = o.reward_weight / o.kl_weight if o.kl_in_return else None
        log_ratios = batch.extras.get("log_ratios", torch.zeros_like(batch.trajectory.log_probs))
        returns = returns_to_go(batch.rewards[None], log_ratios, beta)
        pairs = shuffled_transition_pairs(len(batch.prompts), batch.trajectory.timesteps.numel(),
                                          o.transition_fraction, generator)
        return [[ReturnTransitions(tr, returns[part[:, 1], part[:, 0]]) for tr, part in update]
                for update in pair_plan(batch, pairs, o.updates_per_round, o.microbatch_size)]

    def loss(self, micro: ReturnTransitions) -> LossOutput:
        o, tr = self.options, micro.transitions
        a_t, a_prev, std = self.transition_coefficients(tr)
        cond, uncond = self.conditions(tr.prompts)
        out = self.guided(tr.x_t, tr.t, cond, uncond)
        mean = diffusion.ddim_mean(out, tr.x_t, a_t, a_prev, self.sampler.eta, self.backend.prediction_type)
        log_prob = diffusion.gaussian_log_prob(tr.x_prev, mean, std, reduction="mean")
        value = self.value(tr.x_t, tr.t, cond if o.value_conditioned else None)
        advantages = (micro.returns - value).detach()
        policy = o.reward_weight * clamped_policy_loss(log_prob, tr.log_prob_old, advantages, o.ratio_clip)
        kl = torch.zeros_like(policy)
        if not o.kl_in_return:
            with torch.no_grad(), self.backend.adapter(False):
                prior_out = self.guided(tr.x_t, tr.t, cond, uncond)
            if o.kl_form == "epsilon":
                kl = (out - prior_out).square().flatten(1).mean(1)
            else:
                prior_mean = diffusion.ddim_mean(prior_out, tr.x_t, a_t, a_prev, self.sampler.eta,
                                                 self.backend.prediction_type)
                kl = diffusion.gaussian_kl(mean, prior_mean, std, reduction="mean")
        value_loss = (value - micro.returns).square()
        total = (policy + o.kl_weight * kl + value_loss).mean()
        with torch.no_grad():  # transitions whose ratio the clamp holds: no policy gradient from them
            clipped = ((log_prob - tr.log_prob_old).exp() - 1).abs() > o.ratio_clip
        return LossOutput(total, {
            "loss_policy": policy.mean().item(),
            "clipped_fraction": clipped.float().mean().item(),
            "kl": kl.mean().item(),
            "loss_value": value_loss.mean().item(),
            "advantage_abs_mean": advantages.abs().mean().item(),
        })


@dataclass
class DPOKKLReturnOptions(DPOKOptions):
    """DPOK's options with the KL in the return; the others are DPOKOptions'.

    Args:
        kl_in_return: True here: the KL-regularised return to go, the KL term dropped.
    """

    kl_in_return: bool = True


@register_method
class DPOKKLReturn(DPOK):
    """DPOK with the KL in the return (``kl_in_return``): the exact gradient of E[ρr] − α KL."""

    name = "dpok_kl_return"
    label, color = "DPOK (KL in return)", "#bcbd22"  # in tables and figures
    Options = DPOKKLReturnOptions
