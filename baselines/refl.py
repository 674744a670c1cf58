"""ReFL (Xu et al. 2023, the ImageReward paper): reward of the one-step x̂_0 at a random late step,
regularised by the pretraining loss.

Each update draws one stop step j uniformly from a late range of the DDIM schedule, runs the chain
to x_{t_j} without a graph, takes one denoiser evaluation there with gradient and scores the
predicted clean sample x̂_0(x_{t_j}) with the reward. The release draws j from [30, 39] of 40
steps (one j per batch; ``ImageReward/ReFL.py``, ``random.randint(30, 39)``); the range is given
here as fractions of the schedule, [0.75, 0.975] · T, rounded and clamped to the last step.

The loss, as the paper (§3, §4.2) and release write it::

    L = λ · mean ReLU(c − r(x̂_0))  +  L_pre,     L_pre = mean ‖ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t, c) − ε‖²

with φ = ReLU, c = 2 (``relu(-rewards+2)``), λ = 1e-3 (``--grad_scale 0.001``) and L_pre the
denoising loss on the pretraining data, one pretraining sample per ReFL sample (the paper's
64 + 64 per batch). The pretraining data is what the prior learned from: exact samples of the
toy's mixture, the tiny prior's OpenMoji images with their captions; sd15 has none here (the
paper's LAION-aesthetic subset is not part of this project), so there the reward term stands
alone, and λ then only rescales it (nearly irrelevant under AdamW).

The chain up to x_{t_j} is the round's own rollout (``collect`` samples it with the current model;
one optimiser step per round), so no second sampling pass is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nabla import diffusion
from nabla.methods import LossOutput, Method, Rollouts, chunk, register_method
from nabla.options import Checked, problem

LOSS_FORMS = ("relu", "neg_reward")
PRETRAIN_DATA = ("none", "prior_mixture", "openmoji")


@dataclass
class ReFLOptions(Checked):
    """ReFL's options; defaults are the release's (THUDM/ImageReward), sources in config/README.md.

    Args:
        stop_min: the earliest stop step, as a fraction of the schedule (release: 30 of 40).
        stop_max: the latest stop step, as a fraction of the schedule (release: 39 of 40).
        loss_form: "relu": ReLU(c − r) (release); "neg_reward": −r.
        relu_target: c of the ReLU form (release: relu(-rewards+2)).
        reward_loss_weight: λ on the reward loss (release --grad_scale, the paper's λ).
        pretrain_data: the pretraining loss's data: "prior_mixture" (toy2d: exact samples of the prior's
            mixture), "openmoji" (tiny: the prior's training images, from `pretrain_data_cache`), or "none".
        pretrain_data_cache: the file the "openmoji" pretraining images are read from.
        microbatch_size: trajectories per differentiable pass (gradient accumulation beyond).
    """

    stop_min: float = 0.75
    stop_max: float = 0.975
    loss_form: str = "relu"
    relu_target: float = 2.0
    reward_loss_weight: float = 1e-3
    pretrain_data: str = "none"
    pretrain_data_cache: str = "runs/data/openmoji32.npz"
    microbatch_size: int = 8

    def problems(self) -> list[str]:
        found = []
        if self.loss_form not in LOSS_FORMS:
            found.append(problem("loss_form", self.loss_form, f"must be one of {', '.join(LOSS_FORMS)}"))
        if self.pretrain_data not in PRETRAIN_DATA:
            found.append(problem("pretrain_data", self.pretrain_data, f"must be one of {', '.join(PRETRAIN_DATA)}"))
        if not 0 <= self.stop_min <= self.stop_max <= 1:
            found.append(problem("stop_min", (self.stop_min, self.stop_max), "need 0 <= stop_min <= stop_max <= 1"))
        if self.reward_loss_weight <= 0:
            found.append(problem("reward_loss_weight", self.reward_loss_weight, "must be positive"))
        return found


def refl_loss(rewards: torch.Tensor, form: str, target: float) -> torch.Tensor:
    """Mean of ReLU(c − r) (``"relu"``: no push once r ≥ c) or of −r (``"neg_reward"``)."""
    if form == "neg_reward":
        return -rewards.mean()
    if form == "relu":
        return torch.relu(target - rewards).mean()
    raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {form!r}")


def denoising_loss(model_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The ε-prediction pretraining loss, mean ‖ε̂ − ε‖² over samples and dimensions."""
    return (model_output - noise).square().mean()


def stop_step_range(num_steps: int, stop_min: float, stop_max: float) -> tuple[int, int]:
    """Inclusive range of stop-step indices (0 = the first denoising step) for a T-step schedule."""
    last = num_steps - 1
    return min(round(stop_min * num_steps), last), min(round(stop_max * num_steps), last)


@dataclass
class PretrainBatch:
    """Noised pretraining samples: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε at random t, with their prompts."""

    x_t: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    prompts: list[str]


@dataclass
class StopPoints:
    """Chains stopped at step j: their x_{t_j} (no graph), t_j and prompts; and the pretraining
    batch of the same micro-batch (None without pretraining data)."""

    x_t: torch.Tensor
    t: torch.Tensor  # (N,)
    prompts: list[str]
    pretrain: PretrainBatch | None = None


class PretrainingData:
    """Clean samples of what the prior was trained on, drawn from the round's generator."""

    def __init__(self, kind: str, backend, data_cache: str):
        self.kind, self.backend = kind, backend
        if kind == "openmoji":
            from nabla.models.tiny import TinyPriorConfig, to_tensor, training_set

            data = training_set(TinyPriorConfig(), data_cache)
            with torch.no_grad():
                self.latents = backend.encode(to_tensor(data.images).to(backend.device))
            self.captions = list(data.captions)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        if self.kind == "prior_mixture":
            x0, _ = self.backend.mixture.sample(n, generator)
            return x0.to(self.backend.device, torch.float32), [""] * n
        index = torch.randint(len(self.captions), (n,), generator=generator)
        return self.latents[index.to(self.latents.device)], [self.captions[i] for i in index.tolist()]

    def batch(self, n: int, generator: torch.Generator) -> PretrainBatch:
        x0, prompts = self.draw(n, generator)
        scheduler = self.backend.scheduler
        t = torch.randint(scheduler.config.num_train_timesteps, (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        a = scheduler.alphas_cumprod[t].to(x0).view(-1, *[1] * (x0.ndim - 1))
        return PretrainBatch(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.to(x0.device), noise, prompts)


@register_method
class ReFL(Method):
    """ReFL: maximise the reward of x̂_0 predicted (with gradient) at a random late step, beside
    the pretraining loss."""

    name = "refl"
    label, color = "ReFL", "#ff7f0e"  # in tables and figures
    Options = ReFLOptions

    def __init__(self, options, backend, reward, sampler, total_rounds: int = 1):
        super().__init__(options, backend, reward, sampler, total_rounds)
        self.data = (PretrainingData(options.pretrain_data, backend, options.pretrain_data_cache)
                     if options.pretrain_data != "none" else None)

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[StopPoints]]:
        tr = batch.trajectory
        low, high = stop_step_range(tr.timesteps.numel(), self.options.stop_min, self.options.stop_max)
        j = int(torch.randint(low, high + 1, (1,), generator=generator))
        micro = [
            StopPoints(tr.latents[j, idx], tr.timesteps[j].expand(len(idx)), [batch.prompts[i] for i in idx.tolist()],
                       self.data.batch(len(idx), generator) if self.data is not None else None)
            for idx in chunk(torch.arange(len(batch.prompts)), self.options.microbatch_size)
        ]
        return [micro]  # one optimiser step per round: the stored chain is the current model's

    def loss(self, stop: StopPoints) -> LossOutput:
        o = self.options
        cond, uncond = self.conditions(stop.prompts)
        x_t = stop.x_t.detach()
        t = stop.t.to(x_t.device)
        out = self.guided(x_t, t, cond, uncond)
        alpha_bar = self.backend.scheduler.alphas_cumprod.to(x_t.device)[t]
        x0_hat = diffusion.predict_x0(out, x_t, alpha_bar, self.backend.prediction_type)
        rewards = self.reward(self.backend.decode(x0_hat), stop.prompts)
        reward_loss = refl_loss(rewards, o.loss_form, o.relu_target)
        logs = {"reward_mean": rewards.mean().item(), "stop_timestep": float(t[0]), "loss_reward": reward_loss.item()}
        loss = o.reward_loss_weight * reward_loss
        if stop.pretrain is not None:
            p = stop.pretrain
            pretrain_loss = denoising_loss(self.backend.model_output(p.x_t, p.t, self.backend.encode_prompts(p.prompts)),
                                           p.noise)
            loss = loss + pretrain_loss
            logs["loss_pretrain"] = pretrain_loss.item()
        return LossOutput(loss, logs)
