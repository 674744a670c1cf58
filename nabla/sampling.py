"""Trajectory rollout: DDIM with η and classifier-free guidance over any DiffusionBackend.

Noise is drawn per sample from a generator seeded by that sample's seed — x_T and every step's
noise in one draw — so a given seed gives the same noise whatever the batch it sits in, which is
what lets the evaluation compare a fine-tuned model with its prior image by image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from nabla import diffusion
from nabla.models.base import DiffusionBackend


@dataclass
class Trajectory:
    """What training needs from a rollout, for B samples and T transitions."""

    latents: torch.Tensor  # (T+1, B, ...): x_T, ..., x_0
    timesteps: torch.Tensor  # (T,) t of each transition x_t → x_prev
    prev_timesteps: torch.Tensor  # (T,) t_prev (negative on the last transition)
    model_outputs: torch.Tensor  # (T, B, ...): guided model output at sampling time
    log_probs: torch.Tensor  # (T, B): log P_F(x_prev | x_t), mean over dimensions (η > 0 only)

    @property
    def x0(self) -> torch.Tensor:
        return self.latents[-1]


def seeded_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def per_sample_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One standard normal draw of `shape` per generator, stacked on a new batch axis."""
    return torch.stack(
        [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in generators]
    ).to(device)


def trajectory_noise(seeds: Sequence[int], num_steps: int, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """(num_steps + 1, B, *shape): x_T then each step's noise, one generator call per seed."""
    noise = per_sample_noise(seeded_generators(seeds), (num_steps + 1, *shape), device, dtype)
    return noise.transpose(0, 1)


@dataclass
class Step:
    """One sampler transition x_t → x_prev and what produced it."""

    x_prev: torch.Tensor
    model_output: torch.Tensor  # guided
    mean: torch.Tensor
    std: float  # σ_t, the same for every sample of the step


def sampler_step(
    backend: DiffusionBackend, x: torch.Tensor, t: int, t_prev: int, cond, uncond,
    eta: float, guidance_scale: float, noise: torch.Tensor | None,
) -> Step:
    """x_prev = μ(x_t) + σ_t·noise with the guided model output; differentiable if x or θ need it."""
    a_t, a_prev = diffusion.alpha_bars(backend.scheduler, torch.tensor(t), torch.tensor(t_prev))
    c_x, c_out, std = diffusion.step_coefficients(a_t, a_prev, eta, backend.prediction_type)
    out = backend.guided_output(x, torch.tensor(t, device=x.device), cond, uncond, guidance_scale)
    mean = c_x * x + c_out * out
    x_prev = mean + std * noise if eta > 0 else mean
    return Step(x_prev, out, mean, std)


@torch.no_grad()
def rollout(
    backend: DiffusionBackend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int,
    eta: float = 1.0,
    guidance_scale: float = 5.0,
    record: bool = False,
) -> Trajectory | torch.Tensor:
    """Sample x_0 for each (prompt, seed) pair; with `record`, return the whole Trajectory."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device, dtype = backend.device, torch.float32
    cond = backend.encode_prompts(prompts)
    uncond = backend.null_condition(len(prompts)) if guidance_scale != 1.0 else None
    noise = trajectory_noise(seeds, num_steps, backend.sample_shape, device, dtype)
    x = noise[0]
    pairs = diffusion.timestep_pairs(backend.scheduler, num_steps)
    latents, outputs, log_probs = [x], [], []
    for step, (t, t_prev) in enumerate(pairs, start=1):
        s = sampler_step(backend, x, t, t_prev, cond, uncond, eta, guidance_scale, noise[step])
        if record:
            outputs.append(s.model_output)
            # x_prev − μ = σ_t·noise, so the density's standardised residual is the noise itself
            log_probs.append(
                diffusion.standard_normal_log_prob(noise[step], s.std) if eta > 0
                else torch.zeros(len(prompts), device=device)
            )
            latents.append(s.x_prev)
        x = s.x_prev
    if not record:
        return x
    return Trajectory(
        latents=torch.stack(latents),
        timesteps=torch.tensor([p[0] for p in pairs], device=device),
        prev_timesteps=torch.tensor([p[1] for p in pairs], device=device),
        model_outputs=torch.stack(outputs),
        log_probs=torch.stack(log_probs),
    )


@torch.no_grad()
def sample_images(backend: DiffusionBackend, prompts: Sequence[str], seeds: Sequence[int], batch_size: int = 64, **kwargs) -> torch.Tensor:
    """Decoded images in [0, 1], (B, 3, H, W), batched to bound memory."""
    images = []
    for i in range(0, len(prompts), batch_size):
        x0 = rollout(backend, prompts[i : i + batch_size], seeds[i : i + batch_size], **kwargs)
        images.append(backend.decode(x0))
    return torch.cat(images)
