"""DDPO (Black et al. 2023): PPO with a clipped likelihood ratio on the denoising MDP.

Each round samples trajectories with the current policy; the sampler stores every step's
log P_F(x_prev | x_t), averaged over dimensions as in the DDPO release. Rewards become advantages
by per-prompt normalisation against a running buffer of each prompt's recent rewards, clipped to
±``adv_clip_max``. The policy then takes ``num_inner_epochs × updates_per_round`` optimiser steps
on shuffled micro-batches of transitions, re-evaluating each transition's log-probability under
the current policy at x_t with the same classifier-free guidance, and minimising the PPO-clip loss.

Defaults follow the release (kvablack/ddpo-pytorch) in its aesthetic configuration: clip range
1e-4, advantages clipped at 5, per-prompt buffers of the last 32 rewards with the batch's
statistics used below 16, one inner epoch over all transitions, two optimiser steps per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from nabla import diffusion, distributed
from nabla.methods import (
    LossOutput,
    Method,
    Rollouts,
    Transitions,
    chunk,
    gather_transitions,
    register_method,
    shuffled_transition_pairs,
)

STD_EPS = 1e-6  # added to the reward std before dividing, as the release does


@dataclass
class DDPOOptions:
    """DDPO's options; defaults are the release's (kvablack/ddpo-pytorch), sources in config/README.md.

    Args:
        clip_range: ε of the clipped likelihood ratio.
        adv_clip_max: advantages are clipped to ±this.
        buffer_size: rewards kept per prompt.
        min_count: below this many buffered rewards, a prompt uses the batch's statistics.
        transition_fraction: the share of each trajectory's transitions trained on, drawn at random.
        num_inner_epochs: passes over one round's transitions.
        updates_per_round: optimiser steps per inner epoch.
        microbatch_size: transitions per forward pass (gradient accumulation beyond).
    """

    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    buffer_size: int = 32
    min_count: int = 16
    transition_fraction: float = 1.0
    num_inner_epochs: int = 1
    updates_per_round: int = 2
    microbatch_size: int = 32

    def __post_init__(self):
        if not 0 < self.transition_fraction <= 1:
            raise ValueError(f"transition_fraction must be in (0, 1], got {self.transition_fraction}")
        if self.min_count < 1 or self.buffer_size < 1:
            raise ValueError("buffer_size and min_count must be positive")


# -- pure pieces ----------------------------------------------------------------------------------
def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """Mean over the batch of max(−A ρ, −A clip(ρ, 1 − ε, 1 + ε)), with ρ = exp(log π − log π_old).

    The max is the pessimistic bound: a ratio already moved past the clip in the advantage's
    direction contributes a constant, hence no gradient.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


def _mean_std(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values.mean(), values.std(correction=0) + STD_EPS


class PerPromptStatTracker:
    """Running per-prompt reward statistics that turn rewards into advantages.

    Each prompt keeps its last ``buffer_size`` rewards. After a batch's rewards are appended, a
    prompt with at least ``min_count`` buffered rewards is normalised by its buffer's mean and
    (population) std; one with fewer by the whole batch's. Buffers live on the CPU.
    """

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, torch.Tensor] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Append the batch's rewards and return their (unclipped) advantages."""
        values = rewards.detach().cpu()
        advantages = torch.empty_like(values)
        batch_stats = _mean_std(values)
        for prompt in dict.fromkeys(prompts):  # distinct prompts in first-seen order
            mask = torch.tensor([p == prompt for p in prompts])
            previous = self.buffers.get(prompt, values[:0])
            buffer = torch.cat([previous, values[mask]])[-self.buffer_size :]
            self.buffers[prompt] = buffer
            mean, std = _mean_std(buffer) if len(buffer) >= self.min_count else batch_stats
            advantages[mask] = (values[mask] - mean) / std
        return advantages.to(rewards.device)

    # Checkpoints hold tensors only: prompts travel as UTF-8 bytes plus their lengths.
    def state_dict(self) -> dict[str, torch.Tensor]:
        names = [p.encode() for p in self.buffers]
        buffers = list(self.buffers.values())
        return {
            "prompt_bytes": torch.tensor(list(b"".join(names)), dtype=torch.uint8),
            "prompt_lengths": torch.tensor([len(n) for n in names], dtype=torch.long),
            "counts": torch.tensor([len(b) for b in buffers], dtype=torch.long),
            "rewards": torch.cat(buffers) if buffers else torch.empty(0),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raw = bytes(state["prompt_bytes"].tolist())
        names, start = [], 0
        for length in state["prompt_lengths"].tolist():
            names.append(raw[start : start + length].decode())
            start += length
        rewards = state["rewards"].split(state["counts"].tolist())
        self.buffers = {name: values.clone() for name, values in zip(names, rewards)}


# -- the method -----------------------------------------------------------------------------------
@dataclass
class AdvantagedTransitions:
    """A micro-batch of transitions and the clipped advantage of each one's trajectory."""

    transitions: Transitions
    advantages: torch.Tensor


@register_method
class DDPO(Method):
    """DDPO with the clipped importance-sampling ratio (DDPO_IS in the paper)."""

    name = "ddpo"
    label, color = "DDPO", "#1f77b4"  # in tables and figures
    Options = DDPOOptions
    needs_stochastic_sampler = True

    def __init__(self, options, backend, reward, sampler, total_rounds: int = 1):
        super().__init__(options, backend, reward, sampler, total_rounds)
        self.tracker = PerPromptStatTracker(options.buffer_size, options.min_count)

    def advantages(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Per-prompt normalised rewards, clipped; updates the running buffers.

        Under data parallelism the statistics are those of the whole round (every rank's
        rewards, as DDPO's release gathers them), and each rank keeps its own slice.
        """
        clip = self.options.adv_clip_max
        everyone = self.tracker.update(distributed.gather_lists(prompts), distributed.gather_rewards(rewards))
        start = distributed.rank() * len(prompts)
        return everyone[start : start + len(prompts)].clamp(-clip, clip)

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[AdvantagedTransitions]]:
        """Advantages (this updates the buffers: once per round), then epochs of shuffled transitions."""
        o = self.options
        advantages = self.advantages(batch.prompts, batch.rewards)
        num_steps = batch.trajectory.timesteps.numel()
        plan = []
        for _ in range(o.num_inner_epochs):
            pairs = shuffled_transition_pairs(len(batch.prompts), num_steps, o.transition_fraction, generator)
            for update in chunk(pairs, max(1, -(-len(pairs) // o.updates_per_round))):
                plan.append([
                    AdvantagedTransitions(gather_transitions(batch, part[:, 0], part[:, 1]), advantages[part[:, 0]])
                    for part in chunk(update, o.microbatch_size)
                ])
        return plan

    def loss(self, micro: AdvantagedTransitions) -> LossOutput:
        tr = micro.transitions
        a_t, a_prev, std = self.transition_coefficients(tr)
        cond, uncond = self.conditions(tr.prompts)
        out = self.guided(tr.x_t, tr.t, cond, uncond)
        mean = diffusion.ddim_mean(out, tr.x_t, a_t, a_prev, self.sampler.eta, self.backend.prediction_type)
        log_prob = diffusion.gaussian_log_prob(tr.x_prev, mean, std, reduction="mean")
        loss = ppo_clip_loss(log_prob, tr.log_prob_old, micro.advantages, self.options.clip_range)
        with torch.no_grad():
            log_ratio = log_prob - tr.log_prob_old
            clipped = (log_ratio.exp() - 1).abs() > self.options.clip_range
        return LossOutput(
            loss,
            {
                "approx_kl": 0.5 * log_ratio.square().mean().item(),
                "clip_fraction": clipped.float().mean().item(),
                "advantage_abs_mean": micro.advantages.abs().mean().item(),
            },
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"tracker.{k}": v for k, v in self.tracker.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.tracker.load_state_dict({k.removeprefix("tracker."): v for k, v in state.items()})
