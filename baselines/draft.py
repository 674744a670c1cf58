"""DRaFT-K and DRaFT-LV (Clark et al. 2023): backpropagate the reward through the last sampling steps.

Both maximise r(decode(x_0)) directly, the gradient flowing through the decoder and the last
denoising steps into the LoRA; every earlier step is run without a graph.

* ``draft`` (DRaFT-K): the gradient flows through the last K steps (K = 1 by default, the
  paper's best trade-off; K ≥ the number of steps is full DRaFT).
* ``draft_lv`` (DRaFT-LV): K = 1 with lower variance. As the paper defines it, the final sample
  x_0 (stop-gradient) is re-noised n times with the forward process
  q(x_1 | x_0) = N(√ᾱ_1 x_0, (1 − ᾱ_1) I) at the last step's timestep, each copy is denoised by the
  last sampler step with gradient, and the n rewards' gradients are summed (n = 2 by default).

The chain before the differentiable steps is the round's own rollout: ``collect`` samples it with
the current model (giving the logged training reward and the evaluation), and one optimiser step
follows per round, so the stored x_K is exactly the no-graph prefix of DRaFT's chain. The last K
steps reuse the rollout's per-sample noise, so DRaFT-K's x_0 is the rollout's x_0 again, now with
a graph. Loss: −Σ rewards / number of samples (micro-batches of trajectories, accumulated).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from nabla.methods import LossOutput, Method, Rollouts, chunk, register_method
from nabla.sampling import sampler_step, trajectory_noise


@dataclass
class DraftOptions:
    """DRaFT-K's options; defaults are the paper's (DRaFT has no public release), sources in config/README.md.

    Args:
        truncation_steps: K, the last sampling steps the gradient flows through (1: DRaFT-1).
        gradient_checkpointing: recompute each differentiable step in the backward pass.
        microbatch_size: trajectories per differentiable pass (gradient accumulation beyond).
    """

    truncation_steps: int = 1
    gradient_checkpointing: bool = False
    microbatch_size: int = 8

    def __post_init__(self):
        if self.truncation_steps < 1:
            raise ValueError(f"truncation_steps must be at least 1, got {self.truncation_steps}")


@dataclass
class DraftLVOptions:
    """DRaFT-LV's options; defaults are the paper's (DRaFT has no public release), sources in config/README.md.

    Args:
        renoise_samples: n, the re-noised copies of each x_0 whose gradients are summed.
        gradient_checkpointing: recompute each differentiable step in the backward pass.
        microbatch_size: trajectories per differentiable pass (each with its n copies; gradient
            accumulation beyond).
    """

    renoise_samples: int = 2
    gradient_checkpointing: bool = False
    microbatch_size: int = 8

    def __post_init__(self):
        if self.renoise_samples < 1:
            raise ValueError(f"renoise_samples must be at least 1, got {self.renoise_samples}")


@dataclass
class ChainTail:
    """The differentiable end of a sampling chain: a start point and the steps still to take."""

    x_start: torch.Tensor  # (N, ...) input of the first differentiable step, without a graph
    timesteps: torch.Tensor  # (K,) t of each remaining step
    prev_timesteps: torch.Tensor  # (K,)
    noise: torch.Tensor  # (K, N, ...) each step's sampler noise
    prompts: list[str]  # (N,)
    num_samples: int  # distinct final samples (N / n for DRaFT-LV): the loss divides by it


class _DraftBase(Method):
    """Shared loss: run a ChainTail's steps with gradient and maximise the reward of its end."""

    def _denoise(self, x, t: int, t_prev: int, noise, cond, uncond) -> torch.Tensor:
        """One sampler step x_t → x_prev, the same step as :func:`nabla.sampling.rollout`."""
        return sampler_step(
            self.backend, x, t, t_prev, cond, uncond, self.sampler.eta, self.sampler.guidance_scale, noise
        ).x_prev

    def loss(self, tail: ChainTail) -> LossOutput:
        cond, uncond = self.conditions(tail.prompts)
        x = tail.x_start.detach()
        for k, (t, t_prev) in enumerate(zip(tail.timesteps.tolist(), tail.prev_timesteps.tolist())):
            step = partial(self._denoise, t=t, t_prev=t_prev, noise=tail.noise[k], cond=cond, uncond=uncond)
            x = checkpoint(step, x, use_reentrant=False) if self.options.gradient_checkpointing else step(x)
        rewards = self.reward(self.backend.decode(x), tail.prompts)
        return LossOutput(-rewards.sum() / tail.num_samples, {"reward_mean": rewards.mean().item()})

    def _microbatches(self, batch: Rollouts) -> list[torch.Tensor]:
        indices = torch.arange(len(batch.prompts))
        return list(chunk(indices, self.options.microbatch_size))


@register_method
class DraftK(_DraftBase):
    """DRaFT-K: the reward gradient through the last K steps of the round's own chains."""

    name = "draft"
    label, color = "DRaFT-1", "#2ca02c"  # in tables and figures
    Options = DraftOptions

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[ChainTail]]:
        tr = batch.trajectory
        num_steps = tr.timesteps.numel()
        first = num_steps - min(self.options.truncation_steps, num_steps)
        # the rollout's own noise: noise[s] drove step s − 1 (noise[0] was x_T)
        latents = tr.latents
        noise = trajectory_noise(batch.seeds, num_steps, tuple(latents.shape[2:]), latents.device, latents.dtype)
        tails = [
            ChainTail(
                x_start=tr.latents[first, idx],
                timesteps=tr.timesteps[first:],
                prev_timesteps=tr.prev_timesteps[first:],
                noise=noise[first + 1 :, idx],
                prompts=[batch.prompts[i] for i in idx.tolist()],
                num_samples=len(idx),
            )
            for idx in self._microbatches(batch)
        ]
        return [tails]  # one optimiser step per round: the stored prefix is the current model's


@register_method
class DraftLV(_DraftBase):
    """DRaFT-LV: n re-noisings x_1 ~ q(x_1 | x_0) of each final sample, each denoised with gradient."""

    name = "draft_lv"
    label, color = "DRaFT-LV", "#393b79"  # in tables and figures
    Options = DraftLVOptions

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[ChainTail]]:
        tr = batch.trajectory
        n = self.options.renoise_samples
        alpha_bar = self.backend.scheduler.alphas_cumprod[int(tr.timesteps[-1])].to(tr.latents)
        tails = []
        for idx in self._microbatches(batch):
            x0 = tr.latents[-1, idx].repeat(n, *[1] * (tr.latents.ndim - 2))  # copy i of sample b at i·len(idx) + b
            # drawn on the CPU from the round's generator, so a resumed run draws the same noise
            renoise, step_noise = (torch.randn(x0.shape, generator=generator).to(x0) for _ in range(2))
            tails.append(ChainTail(
                x_start=alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * renoise,
                timesteps=tr.timesteps[-1:],
                prev_timesteps=tr.prev_timesteps[-1:],
                noise=step_noise[None],
                prompts=[batch.prompts[i] for i in idx.tolist()] * n,
                num_samples=len(idx),
            ))
        return [tails]
