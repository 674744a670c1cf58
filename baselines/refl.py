"""ReFL (Xu et al. 2023, the ImageReward paper): reward of the one-step x̂_0 at a random late step.

Each update draws one stop step j uniformly from a late range of the DDIM schedule, runs the chain
to x_{t_j} without a graph, takes one denoiser evaluation there with gradient and scores the
predicted clean sample x̂_0(x_{t_j}) with the reward. The release draws j from [30, 39] of 40 steps
(one j per batch); the range is given here as fractions of the schedule, [0.75, 0.975] · T, rounded
and clamped to the last step, which gives [30, 39] at T = 40.

The chain up to x_{t_j} is the round's own rollout (``collect`` samples it with the current model;
one optimiser step per round), so no second sampling pass is needed.

Loss forms: ``"neg_reward"`` (−r, the default here) or ``"relu"`` (ReLU(c − r), the release's
``relu(-rewards + 2)``, c = ``relu_target``). The paper's λ-weighted pre-training loss on
the original data is out of scope: without it, λ only rescales the reward loss, which AdamW's
normalised steps make (nearly) irrelevant, so it is left out too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nabla import diffusion
from nabla.methods import LossOutput, Method, Rollouts, chunk, register_method

LOSS_FORMS = ("neg_reward", "relu")


@dataclass
class ReFLOptions:
    stop_min: float = 0.75  # earliest stop step, as a fraction of the schedule (30 of 40)
    stop_max: float = 0.975  # latest stop step (39 of 40)
    loss_form: str = "neg_reward"  # "neg_reward": −r; "relu": ReLU(c − r)
    relu_target: float = 2.0  # c of the ReLU form (the release's value)
    microbatch_size: int = 8  # trajectories per differentiable pass (gradient accumulation beyond)

    def __post_init__(self):
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {self.loss_form!r}")
        if not 0 <= self.stop_min <= self.stop_max <= 1:
            raise ValueError(f"need 0 <= stop_min <= stop_max <= 1, got {self.stop_min}, {self.stop_max}")


def refl_loss(rewards: torch.Tensor, form: str, target: float) -> torch.Tensor:
    """Mean of −r (``"neg_reward"``) or of ReLU(c − r) (``"relu"``: no push once r ≥ c)."""
    if form == "neg_reward":
        return -rewards.mean()
    if form == "relu":
        return torch.relu(target - rewards).mean()
    raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {form!r}")


def stop_step_range(num_steps: int, stop_min: float, stop_max: float) -> tuple[int, int]:
    """Inclusive range of stop-step indices (0 = the first denoising step) for a T-step schedule."""
    last = num_steps - 1
    return min(round(stop_min * num_steps), last), min(round(stop_max * num_steps), last)


@dataclass
class StopPoints:
    """Chains stopped at step j: their x_{t_j} (no graph), t_j and prompts."""

    x_t: torch.Tensor
    t: torch.Tensor  # (N,)
    prompts: list[str]


@register_method
class ReFL(Method):
    """ReFL: maximise the reward of x̂_0 predicted (with gradient) at a random late step."""

    name = "refl"
    Options = ReFLOptions

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[StopPoints]]:
        tr = batch.trajectory
        low, high = stop_step_range(tr.timesteps.numel(), self.options.stop_min, self.options.stop_max)
        j = int(torch.randint(low, high + 1, (1,), generator=generator))
        micro = [
            StopPoints(tr.latents[j, idx], tr.timesteps[j].expand(len(idx)), [batch.prompts[i] for i in idx.tolist()])
            for idx in chunk(torch.arange(len(batch.prompts)), self.options.microbatch_size)
        ]
        return [micro]  # one optimiser step per round: the stored chain is the current model's

    def loss(self, stop: StopPoints) -> LossOutput:
        cond, uncond = self.conditions(stop.prompts)
        x_t = stop.x_t.detach()
        t = stop.t.to(x_t.device)
        out = self.guided(x_t, t, cond, uncond)
        alpha_bar = self.backend.scheduler.alphas_cumprod.to(x_t.device)[t]
        x0_hat = diffusion.predict_x0(out, x_t, alpha_bar, self.backend.prediction_type)
        rewards = self.reward(self.backend.decode(x0_hat), stop.prompts)
        loss = refl_loss(rewards, self.options.loss_form, self.options.relu_target)
        return LossOutput(loss, {"reward_mean": rewards.mean().item(), "stop_timestep": float(t[0])})
