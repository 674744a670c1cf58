r"""Adjoint Matching (Domingo-Enrich et al., ICLR 2025): memoryless stochastic optimal control.

Notation (our time convention: a transition x_t → x_prev, x_0 clean, j = 0 … T−1 the transitions
of a trajectory in sampling order, x^(j) the state before transition j, x^(T) = x_0):
μ_θ, μ# the fine-tuned and the prior's guided kernel means, σ_j the step's std, λ the reward
multiplier (our β).

1. Sample trajectories with the current model; they are constants.
2. The lean adjoint, backwards from the end, with no parameter gradients:
       a^(T) = −λ ∇_{x_0} r(decode(x_0)),
       a^(j) = J_{μ#}(x^(j))ᵀ a^(j+1)        (one vector-Jacobian product through the prior's step)
3. The loss on a few transitions j of each trajectory:
       ‖(μ_θ(x^(j)) − μ#(x^(j)))/σ_j + σ_j a^(j+1)‖²   summed over dimensions.

Its minimiser is μ_θ − μ# = −σ_j² E[a^(j+1) | x^(j)]: on a linear-Gaussian step with a linear
reward exactly the tilted kernel N(μ# + σ²λ∇r, σ²) (a test keeps it). The optimal control tilts
the prior's trajectory distribution by exp(λr); its x_0 marginal is p#·exp(λr) when the sampler is
memoryless (DDPM, i.e. DDIM with η = 1, ours) and its start x_T independent of x_0.

Cost per round: the rollout, T − 1 prior VJPs per trajectory (all of the chain, whichever
transitions are trained), one reward gradient; then per trained transition a θ forward and
backward and a prior forward.

Defaults from the first author's release for Stable Diffusion with DDIM
(microsoft/soc-fine-tuning-sd, ``configs/multi_prompt.yaml`` and ``am_trainer.py``):
``reward_multiplier`` λ = 100; ``num_timesteps_to_load_train`` 4 transitions per trajectory, 2
uniformly among the first 60 % of the steps and 2 among the last 40 % (``sample_time_indices``);
one optimiser step per sampled batch; per-sample loss clipping, dropping a sample whose √loss
exceeds an exponential moving average (decay 0.9) of the batch's 90 % quantile of √loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nabla import diffusion
from nabla.methods import LossOutput, Method, Rollouts, Transitions, pair_plan, register_method, trajectory_step_pairs


@dataclass
class AdjointMatchingOptions:
    """Adjoint Matching's options; defaults are the release's (microsoft/soc-fine-tuning-sd), sources in
    config/README.md.

    Args:
        reward_scale: λ: the target is p#·exp(λr) (release reward_multiplier).
        early_steps: transitions trained per trajectory among the first (1 − late_fraction) of the steps.
        late_steps: transitions trained per trajectory among the last late_fraction of the steps.
        late_fraction: the share of the steps, at the end of each trajectory, that late_steps draws from
            (early_steps draws from the rest); in (0, 1).
        updates_per_round: optimiser steps per round (1: one optimiser step per sampled batch).
        microbatch_size: transitions per forward pass (gradient accumulation beyond).
        loss_clip_quantile: the quantile of √loss whose moving average bounds a sample's √loss (a sample
            above the bound is dropped from the loss); 0 quantile: no clipping.
        loss_clip_decay: the decay of that moving average of the quantile.
    """

    reward_scale: float = 100.0
    early_steps: int = 2
    late_steps: int = 2
    late_fraction: float = 0.4
    updates_per_round: int = 1
    microbatch_size: int = 32
    loss_clip_quantile: float = 0.9
    loss_clip_decay: float = 0.9

    def __post_init__(self):
        if not 0 < self.late_fraction < 1:
            raise ValueError(f"late_fraction must be in (0, 1), got {self.late_fraction}")
        if self.early_steps < 0 or self.late_steps < 0 or self.early_steps + self.late_steps == 0:
            raise ValueError("early_steps and late_steps must be non-negative and not both 0")


# -- pure pieces ----------------------------------------------------------------------------------
def adjoint_matching_loss(mean: torch.Tensor, prior_mean: torch.Tensor, std, adjoint: torch.Tensor) -> torch.Tensor:
    """Per sample Σ_dims ((μ_θ − μ#)/σ + σ a)², a the lean adjoint at x_prev."""
    s = std if isinstance(std, (int, float)) else std.view(-1, *[1] * (mean.dim() - 1)).to(mean.dtype)
    return ((mean - prior_mean) / s + s * adjoint).square().flatten(1).sum(dim=1)


def lean_adjoints(terminal: torch.Tensor, vjps) -> torch.Tensor:
    """(T, B, ...) a^(1) … a^(T): a^(T) = ``terminal``, a^(j) = ``vjps[j](a^(j+1))`` for j = T−1 … 1,
    where ``vjps[j]`` maps v to J_{μ#}(x^(j))ᵀ v (``vjps[0]`` is never needed)."""
    adjoints = [terminal]
    for vjp in reversed(vjps[1:]):
        adjoints.append(vjp(adjoints[-1]))
    return torch.stack(adjoints[::-1])


def time_indices(num_steps: int, early: int, late: int, late_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted transition indices: ``early`` uniformly without replacement among the first
    ⌈(1 − late_fraction)·T⌉ steps, ``late`` among the others (fewer where a part is smaller)."""
    split = min(num_steps - 1, max(1, round((1 - late_fraction) * num_steps))) if num_steps > 1 else 0
    first = torch.randperm(split, generator=generator)[:early]
    last = split + torch.randperm(num_steps - split, generator=generator)[:late]
    return torch.cat([first, last]).sort().values


# -- the method -----------------------------------------------------------------------------------
@dataclass
class AdjointTransitions:
    """A micro-batch of transitions and the lean adjoint at each one's x_prev."""

    transitions: Transitions
    adjoints: torch.Tensor


@register_method
class AdjointMatching(Method):
    """Adjoint Matching: regress θ's control onto the lean adjoint of the prior's sampler."""

    name = "adjoint_matching"
    label, color = "Adjoint Matching", "#8c564b"  # in tables and figures
    Options = AdjointMatchingOptions
    target = "tilted"
    needs_stochastic_sampler = True

    @classmethod
    def target_beta(cls, options, sample_shape) -> float:
        return options.reward_scale

    def __init__(self, options, backend, reward, sampler, total_rounds: int = 1):
        super().__init__(options, backend, reward, sampler, total_rounds)
        self.clip_level: float | None = None  # the moving average of the √loss quantile

    def _prior_vjp(self, x: torch.Tensor, t, t_prev, cond, uncond):
        """v ↦ J_{μ#}(x)ᵀ v at one step (the prior's guided kernel mean; no parameter gradients)."""
        a_t, a_prev = diffusion.alpha_bars(self.backend.scheduler, t, t_prev)
        a_t, a_prev = a_t.to(x.dtype), a_prev.to(x.dtype)

        def vjp(v: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                mean = self.kernel_mean(leaf, t, a_t, a_prev, cond, uncond, prior=True)
                (grad,) = torch.autograd.grad(mean, leaf, grad_outputs=v)
            return grad

        return vjp

    def collect(self, prompts, seeds) -> Rollouts:
        batch = super().collect(prompts, seeds)
        tr = batch.trajectory
        cond, uncond = self.conditions(batch.prompts)
        with torch.enable_grad():
            x0 = tr.x0.detach().requires_grad_(True)
            reward = self.reward(self.backend.decode(x0), batch.prompts)
            (grad,) = torch.autograd.grad(reward.sum(), x0)
        vjps = [self._prior_vjp(tr.latents[j], t, t_prev, cond, uncond)
                for j, (t, t_prev) in enumerate(zip(tr.timesteps, tr.prev_timesteps))]
        batch.extras["adjoints"] = lean_adjoints(-self.options.reward_scale * grad, vjps).detach()
        return batch

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[AdjointTransitions]]:
        o = self.options
        num_steps = batch.trajectory.timesteps.numel()
        pairs = trajectory_step_pairs([time_indices(num_steps, o.early_steps, o.late_steps, o.late_fraction, generator)
                                       for _ in batch.prompts])
        adjoints = batch.extras["adjoints"]
        return [[AdjointTransitions(tr, adjoints[part[:, 1], part[:, 0]]) for tr, part in update]
                for update in pair_plan(batch, pairs, o.updates_per_round, o.microbatch_size)]

    def loss(self, micro: AdjointTransitions) -> LossOutput:
        o, tr = self.options, micro.transitions
        a_t, a_prev, std = self.transition_coefficients(tr)
        cond, uncond = self.conditions(tr.prompts)
        mean = self.kernel_mean(tr.x_t, tr.t, a_t, a_prev, cond, uncond)
        with torch.no_grad():
            prior_mean = self.kernel_mean(tr.x_t, tr.t, a_t, a_prev, cond, uncond, prior=True)
        per_sample = adjoint_matching_loss(mean, prior_mean, std, micro.adjoints)
        kept = torch.ones_like(per_sample, dtype=torch.bool)
        if o.loss_clip_quantile > 0:
            root = per_sample.detach().sqrt()
            level = torch.quantile(root, o.loss_clip_quantile).item()
            self.clip_level = level if self.clip_level is None else (
                o.loss_clip_decay * self.clip_level + (1 - o.loss_clip_decay) * level)
            kept = root <= self.clip_level
        return LossOutput((per_sample * kept).mean(), {
            "loss_unclipped": per_sample.mean().item(),
            "kept_fraction": kept.float().mean().item(),
            "adjoint_norm": micro.adjoints.flatten(1).norm(dim=1).mean().item(),
        })

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.clip_level is None else {"clip_level": torch.tensor(self.clip_level, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.clip_level = float(state["clip_level"]) if "clip_level" in state else None
