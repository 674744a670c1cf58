"""DB-GFlowNet (Zhang et al. 2024, DAG-DB): detailed balance with a forward-looking scalar log-flow.

For each sampled transition x_t → x_prev the squared detailed-balance residual

    log F(x_t) + log P_F(x_prev | x_t) − log F(x_prev) − log P_B(x_t | x_prev)

is minimised jointly in the policy θ (through log P_F) and a scalar log-flow network f_φ. The flow
is "forward-looking": log F(x_t) = f_φ(x_t, t, c) + β r(decode(x̂_0(x_t))), with x̂_0 the current
policy's one-step prediction taken without gradient, and at the end log F(x_0) = β r(x_0) exactly.
log P_F is the sampler's Gaussian and log P_B the fixed noising kernel, both averaged over
dimensions (as the DDPO-style log-probabilities of the DAG release), so the balance holds for
log-densities scaled by 1/D: the target is exp(D·β·r) in full-likelihood units (D the dimensions
of a sample: 2 at toy2d, 1024 at tiny, 16384 at sd15).

Defaults are the release's (apple/ml-diffusion-alignment-gflownet, ``config/sd.yaml`` and
``scripts/train_gfn.py``): β = ``reward_exp`` 100, annealed linearly from 0 over the first half of
the epochs (``anneal: linear``, ``ratio = min(1, epoch / (0.5 num_epochs))``), here of the run's
rounds, one β per round; the output regulariser λ‖ε̂_θ − ε̂_old‖² with ``unetreg`` 1.0 and ε̂_old
stored at sampling time; every transition trained (``timestep_fraction`` 1.0), two optimiser steps
per round (16 × 4 samples per epoch, 8 × 4 per step); the forward-looking x̂_0 from the
conditional prediction alone (no guidance).

f_φ: an MLP on [x, emb(t)] for points; for latents a small CNN (strided convolutions with the
timestep embedding and the mean-pooled prompt embedding added after the first one, global average
pooling, linear head). Its head is zero-initialised, so at first the flow is the pure
forward-looking estimate β r(x̂_0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from nabla import diffusion, objectives
from nabla.methods import LossOutput, Method, Rollouts, Transitions, register_method


@dataclass
class DBGFlowNetOptions:
    """DB-GFlowNet's options; defaults are the release's (apple/ml-diffusion-alignment-gflownet), sources in
    config/README.md.

    Args:
        reward_scale: β (release reward_exp); with per-dimension log-probs the target is exp(D·β·r).
        reward_scale_start: β at the first round.
        anneal_fraction: the share of the rounds over which β ramps up linearly (release: half).
        output_reg: λ on ‖ε̂_θ − ε̂_old‖² (release unetreg).
        transition_fraction: the share of each trajectory's transitions trained on (release
            timestep_fraction).
        stratified: one transition per stratum (else uniform without replacement).
        train_on_previous_round: round r trains on round r−1's trajectories (else on its own).
        updates_per_round: optimiser steps per round (release: 16 x 4 samples per epoch, 8 x 4 per
            optimiser step).
        microbatch_size: transitions per forward pass (gradient accumulation beyond).
        flow_conditioned: f_φ sees the prompt (image scales).
        flow_channels: f_φ's CNN widths at the image scales.
        flow_hidden: f_φ's MLP width for points.
    """

    reward_scale: float = 100.0
    reward_scale_start: float = 0.0
    anneal_fraction: float = 0.5
    output_reg: float = 1.0
    transition_fraction: float = 1.0
    stratified: bool = True
    train_on_previous_round: bool = False
    updates_per_round: int = 2
    microbatch_size: int = 32
    flow_conditioned: bool = True
    flow_channels: tuple[int, ...] = (32, 64)
    flow_hidden: int = 128


# -- pure pieces ----------------------------------------------------------------------------------
def db_residual(
    log_flow_t: torch.Tensor, log_pf: torch.Tensor, log_flow_prev: torch.Tensor, log_pb: torch.Tensor
) -> torch.Tensor:
    """log F(x_t) + log P_F(x_prev | x_t) − log F(x_prev) − log P_B(x_t | x_prev), per transition."""
    return log_flow_t + log_pf - log_flow_prev - log_pb


def annealed_reward_scale(final: float, start: float, round_index: int, anneal_rounds: float) -> float:
    """β of 0-based round ``round_index``: linear from ``start`` to ``final`` over ``anneal_rounds``
    rounds, then ``final`` (the release's ``min(1, epoch / (0.5 num_epochs))``)."""
    if anneal_rounds <= 0:
        return final
    return start + min(1.0, round_index / anneal_rounds) * (final - start)


# -- the log-flow networks ------------------------------------------------------------------------
def _zeroed(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _time_embedding(t: torch.Tensor, dim: int, x: torch.Tensor) -> torch.Tensor:
    t = t.to(x.device).reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.to(x.device)
    return get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0).to(x.dtype)


class LogFlowMLP(nn.Module):
    """f_φ(x, t) for points: an MLP on [x, emb(t)] with a zeroed scalar head; ignores conditioning."""

    def __init__(self, dim: int, hidden: int = 128, layers: int = 3, time_embed_dim: int = 64):
        super().__init__()
        self.time_embed_dim = time_embed_dim
        blocks: list[nn.Module] = []
        width = dim + time_embed_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*blocks, _zeroed(nn.Linear(width, 1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, dim); returns (B,)."""
        return self.net(torch.cat([x, _time_embedding(t, self.time_embed_dim, x)], dim=-1)).squeeze(-1)


class LogFlowCNN(nn.Module):
    """f_φ(x, t, c) for latents (C, H, W): strided convolutions, pooled, and a zeroed scalar head.

    The timestep embedding and (if conditioned) the token-averaged prompt embedding are added as
    a per-channel bias after the first convolution.
    """

    def __init__(self, sample_shape: Sequence[int], channels: Sequence[int] = (32, 64),
                 cond_dim: Optional[int] = None, time_embed_dim: int = 64):
        super().__init__()
        self.time_embed_dim = time_embed_dim
        width = channels[0]
        self.conv_in = nn.Conv2d(sample_shape[0], width, 3, padding=1)
        self.time_proj = nn.Sequential(nn.Linear(time_embed_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width) if cond_dim is not None else None
        blocks: list[nn.Module] = []
        for out in channels[1:]:
            blocks += [nn.GroupNorm(min(8, width), width), nn.SiLU(), nn.Conv2d(width, out, 3, stride=2, padding=1)]
            width = out
        self.body = nn.Sequential(*blocks, nn.GroupNorm(min(8, width), width), nn.SiLU())
        self.head = _zeroed(nn.Linear(width, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, H, W); cond: (B, L, cond_dim) prompt embeddings when conditioned; returns (B,)."""
        bias = self.time_proj(_time_embedding(t, self.time_embed_dim, x))
        if self.cond_proj is not None:
            bias = bias + self.cond_proj(cond.to(x.dtype).mean(dim=1))
        h = self.conv_in(x) + bias[:, :, None, None]
        return self.head(self.body(h).mean(dim=(2, 3))).squeeze(-1)


def build_scalar_network(backend, conditioned: bool, channels: Sequence[int], hidden: int) -> nn.Module:
    """A zero-initialised scalar network f(x, t, c) on the backend's samples, on its device: the MLP
    for points, the CNN (prompt-conditioned if asked) for latents. DPOK's value net is one too."""
    shape = tuple(backend.sample_shape)
    if len(shape) == 1:
        return LogFlowMLP(shape[0], hidden=hidden).to(backend.device)
    cond_dim = backend.encode_prompts([""]).shape[-1] if conditioned else None
    return LogFlowCNN(shape, channels, cond_dim).to(backend.device)


# -- the method -----------------------------------------------------------------------------------
@dataclass
class ScaledTransitions:
    """A micro-batch of transitions and the β of the update it belongs to."""

    transitions: Transitions
    reward_scale: float


@register_method
class DBGFlowNet(Method):
    """Detailed-balance GFlowNet fine-tuning with a forward-looking scalar log-flow f_φ."""

    name = "db_gflownet"
    label, color = "DB-GFlowNet", "#9467bd"  # in tables and figures
    Options = DBGFlowNetOptions
    target = "reward_only"
    needs_stochastic_sampler = True

    @classmethod
    def target_beta(cls, options, sample_shape) -> float:
        """D·β: log P_F and log P_B are means over the D dimensions of a sample, so the balance
        holds for log-densities scaled by 1/D, whose terminal flow is β r: exp(D·β·r) in full units."""
        return options.reward_scale * math.prod(sample_shape)

    def __init__(self, options, backend, reward, sampler, total_rounds: int = 1):
        super().__init__(options, backend, reward, sampler, total_rounds)
        self.flow = build_scalar_network(backend, options.flow_conditioned, options.flow_channels, options.flow_hidden)
        self.rounds_done = 0

    @property
    def trains_on_previous_round(self) -> bool:
        return self.options.train_on_previous_round

    def modules(self):
        return {"flow": self.flow}

    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[ScaledTransitions]]:
        o = self.options
        plan = self.subsampled_transition_plan(batch, generator)
        scale = annealed_reward_scale(o.reward_scale, o.reward_scale_start, self.rounds_done,
                                      o.anneal_fraction * self.total_rounds)
        self.rounds_done += 1
        return [[ScaledTransitions(tr, scale) for tr in update] for update in plan]

    def _flow(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return self.flow(x, t, cond if self.options.flow_conditioned else None)

    @torch.no_grad()
    def _lookahead_reward(self, x0_hat: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.reward(self.backend.decode(x0_hat), list(prompts))

    def _log_flow_prev(self, tr: Transitions, a_prev, cond, uncond, beta: float) -> torch.Tensor:
        """log F(x_prev): β r(x_0) on last transitions, f_φ + β r(x̂_0(x_prev)) elsewhere."""
        log_flow = beta * tr.rewards.to(tr.x_prev.dtype)
        inner = (~tr.is_last).nonzero().squeeze(1)
        if len(inner):
            sub = lambda c: None if c is None else c[inner]  # noqa: E731
            x, t = tr.x_prev[inner], tr.t_prev[inner]
            with torch.no_grad():  # the release's look-ahead: the conditional prediction, no guidance
                out = self.backend.model_output(x, t, sub(cond))
            x0_hat = diffusion.predict_x0(out, x, a_prev[inner], self.backend.prediction_type)
            reward = self._lookahead_reward(x0_hat, [tr.prompts[i] for i in inner.tolist()])
            log_flow = log_flow.index_put((inner,), self._flow(x, t, sub(cond)) + beta * reward)
        return log_flow

    def loss(self, micro: ScaledTransitions) -> LossOutput:
        tr, beta = micro.transitions, micro.reward_scale
        ptype = self.backend.prediction_type
        a_t, a_prev, std = self.transition_coefficients(tr)
        cond, uncond = self.conditions(tr.prompts)
        # the look-ahead's conditional prediction is the conditional half of the guided forward
        out, conditional = self.backend.guided_and_conditional(tr.x_t, tr.t, cond, uncond, self.sampler.guidance_scale)
        mean = diffusion.ddim_mean(out, tr.x_t, a_t, a_prev, self.sampler.eta, ptype)
        log_pf = diffusion.gaussian_log_prob(tr.x_prev, mean, std, reduction="mean")
        log_pb = diffusion.backward_log_prob(tr.x_t, tr.x_prev, a_t, a_prev, reduction="mean")
        x0_hat = diffusion.predict_x0(conditional.detach(), tr.x_t, a_t, ptype)
        log_flow_t = self._flow(tr.x_t, tr.t, cond) + beta * self._lookahead_reward(x0_hat, tr.prompts)
        log_flow_prev = self._log_flow_prev(tr, a_prev, cond, uncond, beta)
        residual = db_residual(log_flow_t, log_pf, log_flow_prev, log_pb)
        regularizer = objectives.output_regularizer(out, tr.model_output_old, "mean").mean()
        total = residual.square().mean() + self.options.output_reg * regularizer
        return LossOutput(
            total,
            {
                "loss_db": residual.square().mean().item(),
                "loss_output_reg": regularizer.item(),
                "reward_scale": beta,
                "log_flow_t_mean": log_flow_t.mean().item(),
            },
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rounds_done": torch.tensor(self.rounds_done)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rounds_done = int(state["rounds_done"])
