r"""Relative Trajectory Balance (Venkatraman et al., NeurIPS 2024): trajectory balance against the prior.

Notation: τ = (x_T, ..., x_0) one sampled trajectory with prompt c, ℓ_t = log P_F^θ(x_prev | x_t) −
log P_F^#(x_prev | x_t) summed over dimensions (full Gaussian densities: the exact target
depends on it), log Z_φ(c) a learned log-partition per prompt.

For each trajectory (the start density N(x_T; 0, I) is shared by θ and the prior and cancels)::

    δ(τ) = log Z_φ(c) + Σ_t ℓ_t − β r(x_0),        loss = mean over trajectories of δ²

δ ≡ 0 on every trajectory means P_θ(τ) = P#(τ) exp(βr(x_0)) / Z(c): the fine-tuned sampler is the
prior's trajectory distribution tilted by exp(βr), whose x_0 marginal is p#·exp(βr) — exactly, when
the tilt does not depend on x_T (the start independent of x_0; see README "What exact means").

The gradient. ℓ_t of a step depends on θ through one forward at x_t (x_t, x_prev fixed: off-policy
trajectories are allowed). As in the release, only a random subset S of each trajectory's steps
(``transition_fraction``) is recomputed with θ's graph; the other steps enter δ at their values
from sampling time, ℓ_t = log P_F^{θ_old} − log P_F^#, computed in ``collect`` (the prior's side:
one prior forward per step, without graph). So one update costs |S| θ forwards and backwards per
trajectory, not T; at toy2d S is every step (the exact gradient).

Defaults from the release (GFNOrg/diffusion-finetuning, ``text_to_image/train_gfn.py``, its
README's RTB command): ``reward_weight`` 1.0 (there with per-dimension-mean log-probabilities;
here log-probabilities are summed, so a scale's β is set in its train config), ``p_step`` 5
optimiser steps per sampling round, ``p_batch_size`` 8 of the 50 steps with gradient (0.16), the
log-partition at lr ``c_learning_rate`` 1e-3 (config: ``flow_lr``) and zero at the start.
Deviation (config/README.md): log Z_φ(c) is a bias plus a zero-initialised linear map of the
token-averaged prompt embedding (the release's single scalar is exact only for one prompt); each
update uses every trajectory of the round once (the release draws 12 from its 10-trajectory
buffer per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nabla import diffusion
from nabla.methods import LossOutput, Method, Rollouts, Transitions, chunk, gather_transitions, register_method


@dataclass
class RTBOptions:
    """RTB's options; defaults are the release's (GFNOrg/diffusion-finetuning), sources in config/README.md.

    Args:
        reward_scale: β of the target p#·exp(βr), log-probs summed over dimensions.
        transition_fraction: the share of a trajectory's steps recomputed with θ's graph (release 8/50).
        updates_per_round: optimiser steps per sampling round (release --p_step).
        microbatch_size: trajectories per pass (each with its recomputed steps).
        log_z_conditioned: log Z_φ(c) sees the prompt embedding (image scales).
    """

    reward_scale: float = 1.0
    transition_fraction: float = 0.16
    updates_per_round: int = 5
    microbatch_size: int = 8
    log_z_conditioned: bool = True

    def __post_init__(self):
        if not 0 < self.transition_fraction <= 1:
            raise ValueError(f"transition_fraction must be in (0, 1], got {self.transition_fraction}")


# -- pure pieces ----------------------------------------------------------------------------------
def rtb_residual(log_z: torch.Tensor, log_ratio_sum: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """δ = log Z + Σ_t (log P_F^θ − log P_F^#) − β r, per trajectory."""
    return log_z + log_ratio_sum - beta * rewards


class LogPartition(nn.Module):
    """log Z_φ(c): a scalar bias plus, if conditioned, a zero-initialised linear map of the
    token-averaged prompt embedding; 0 at the start."""

    def __init__(self, cond_dim: int | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.proj = nn.Linear(cond_dim, 1, bias=False) if cond_dim is not None else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)

    def forward(self, cond: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        log_z = self.bias.expand(batch_size)
        if self.proj is not None and cond is not None:
            log_z = log_z + self.proj(cond.float().mean(dim=1)).squeeze(-1)
        return log_z


# -- the method -----------------------------------------------------------------------------------
@dataclass
class TrajectoryBatch:
    """Some trajectories of a round: their recomputed steps (k per trajectory, trajectory-major),
    Σ_t ℓ_t at sampling time, rewards and prompts."""

    transitions: Transitions  # N·k transitions, those of trajectory b at b·k ... b·k + k − 1
    sampled_log_ratio_sum: torch.Tensor  # (N,)
    rewards: torch.Tensor  # (N,)
    prompts: list[str]  # (N,)


@register_method
class RelativeTrajectoryBalance(Method):
    """RTB: the squared log-ratio of the tilted prior's trajectory density to θ's, per trajectory."""

    name = "rtb"
    label, color = "RTB", "#e377c2"  # in tables and figures
    Options = RTBOptions
    target = "tilted"
    needs_stochastic_sampler = True

    @classmethod
    def target_beta(cls, options, sample_shape) -> float:
        return options.reward_scale  # full densities: exp(βr) itself

    def __init__(self, options, backend, reward, sampler, total_rounds: int = 1):
        super().__init__(options, backend, reward, sampler, total_rounds)
        cond = backend.encode_prompts([""]) if options.log_z_conditioned else None
        self.log_z = LogPartition(cond.shape[-1] if cond is not None else None).to(backend.device)

    def modules(self):
        return {"log_z": self.log_z}

    def collect(self, prompts, seeds) -> Rollouts:
        batch = super().collect(prompts, seeds)
        batch.extras["log_ratios"] = self.prior_log_ratios(batch)
        return batch

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[TrajectoryBatch]]:
        o = self.options
        num_steps = batch.trajectory.timesteps.numel()
        k = max(1, round(o.transition_fraction * num_steps))
        sums = batch.extras["log_ratios"].sum(dim=0)
        plan = []
        for _ in range(o.updates_per_round):
            micro = []
            for traj in chunk(torch.arange(len(batch.prompts)), o.microbatch_size):
                steps = torch.stack([torch.randperm(num_steps, generator=generator)[:k] for _ in traj])
                micro.append(TrajectoryBatch(
                    gather_transitions(batch, traj.repeat_interleave(k), steps.flatten()),
                    sums[traj], batch.rewards[traj], [batch.prompts[i] for i in traj.tolist()],
                ))
            plan.append(micro)
        return plan

    def loss(self, micro: TrajectoryBatch) -> LossOutput:
        tr, n = micro.transitions, len(micro.prompts)
        a_t, a_prev, std = self.transition_coefficients(tr)
        cond, uncond = self.conditions(tr.prompts)
        mean = self.kernel_mean(tr.x_t, tr.t, a_t, a_prev, cond, uncond)
        log_prob = diffusion.gaussian_log_prob(tr.x_prev, mean, std, reduction="sum")
        # ℓ_t now − ℓ_t at sampling = log P_F^θ − log P_F^{θ_old} (the prior's side cancels)
        sampled = tr.log_prob_old * math.prod(tr.x_t.shape[1:])
        change = (log_prob - sampled).view(n, -1).sum(dim=1)
        # the transitions' conditioning is trajectory-major, k rows a trajectory: one row each
        prompt_cond = cond[:: len(tr.prompts) // n] if cond is not None and self.options.log_z_conditioned else None
        log_z = self.log_z(prompt_cond, n)
        delta = rtb_residual(log_z, micro.sampled_log_ratio_sum + change, micro.rewards, self.options.reward_scale)
        return LossOutput(delta.square().mean(), {
            "log_z_mean": log_z.mean().item(),
            "log_ratio_sum_mean": (micro.sampled_log_ratio_sum + change).mean().item(),
            "delta_abs_mean": delta.abs().mean().item(),
        })
