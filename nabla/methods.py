"""The Method interface every fine-tuning algorithm implements, and its registry.

The trainer (:mod:`nabla.trainer`) owns the loop — sampling rounds, optimiser steps, gradient
accumulation, clipping, logging, checkpoints — and asks a method only four things:

* ``collect(prompts, seeds)``: what one round samples (usually gradient-free trajectories with
  their rewards, see :class:`Rollouts`);
* ``plan(batch, generator)``: how that batch splits into optimiser updates, each a list of
  micro-batches whose gradients are accumulated;
* ``loss(microbatch)``: a scalar to minimise and the terms to log;
* ``modules()``: extra trainable networks (a flow network), beside the backend's LoRA.

A new method is one module defining a subclass with ``@register_method`` (its ``name``, and the
``label`` and ``color`` the report draws it with), plus one line in ``METHOD_MODULES`` so the
registry can import it; ``python -m nabla schema-methods`` then writes it into the workflow
schema's method enum and ``python -m nabla options-doc`` its options, documented in its
``Options`` dataclass's ``Args:`` block, into ``config/options.md`` (tests keep both equal).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Sequence

import torch

from nabla import diffusion
from nabla.models.base import DiffusionBackend
from nabla.sampling import Trajectory, rollout

#: modules whose import registers methods (the ∇-GFlowNet methods and the baselines), in the order
#: of the report's tables and legends
METHOD_MODULES = (
    "nabla.nabla_db",
    "baselines.db_gflownet",
    "baselines.ddpo",
    "baselines.draft",
    "baselines.refl",
    "baselines.adjoint_matching",
    "baselines.rtb",
    "baselines.dpok",
)

METHODS: dict[str, type["Method"]] = {}
_REGISTERED: list[str] = []  # registration order: within a module, the classes' definition order


def register_method(cls: type["Method"]) -> type["Method"]:
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name '{cls.name}' registered twice")
    METHODS[cls.name] = cls
    if cls.name not in _REGISTERED:
        _REGISTERED.append(cls.name)
    return cls


def available_methods() -> list[str]:
    for module in METHOD_MODULES:
        importlib.import_module(module)
    return sorted(METHODS)


def registry() -> dict[str, type["Method"]]:
    """Every method, in ``METHOD_MODULES`` order and then in definition order within its module
    (whatever order the modules happened to be imported in): the report's order."""
    available_methods()
    def key(name: str) -> tuple[int, int]:
        module = METHODS[name].__module__
        return (METHOD_MODULES.index(module) if module in METHOD_MODULES else len(METHOD_MODULES), _REGISTERED.index(name))
    return {name: METHODS[name] for name in sorted(METHODS, key=key)}


def method_class(name: str) -> type["Method"]:
    names = available_methods()
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; known methods: {', '.join(names)}")
    return METHODS[name]


# -- what a sampling round produces ---------------------------------------------------------------
@dataclass
class SamplerConfig:
    """The DDIM sampler every method of a run shares.

    Args:
        num_steps: denoising steps of a trajectory.
        eta: DDIM's η; 1 is the paper's "DDPM" (memoryless) sampler, whose transitions have a density.
        guidance_scale: classifier-free guidance's scale (1: none).
    """

    num_steps: int = 20
    eta: float = 1.0
    guidance_scale: float = 5.0


@dataclass
class Rollouts:
    """B trajectories sampled without gradient, their prompts, seeds and terminal rewards."""

    trajectory: Trajectory
    prompts: list[str]
    seeds: list[int]
    rewards: torch.Tensor  # (B,)
    #: per-round tensors a method computes in its own ``collect`` (e.g. the prior's log-probs)
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    TENSORS: ClassVar = ("latents", "timesteps", "prev_timesteps", "model_outputs", "log_probs")

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"trajectory.{k}": getattr(self.trajectory, k).contiguous() for k in self.TENSORS}
        state["rewards"] = self.rewards.contiguous()
        state["seeds"] = torch.tensor(self.seeds)
        state.update({f"extras.{k}": v.contiguous() for k, v in self.extras.items()})
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], prompts: list[str]) -> "Rollouts":
        trajectory = Trajectory(**{k: state[f"trajectory.{k}"] for k in cls.TENSORS})
        extras = {k.removeprefix("extras."): v for k, v in state.items() if k.startswith("extras.")}
        return cls(trajectory, list(prompts), state["seeds"].tolist(), state["rewards"], extras)


@dataclass
class Transitions:
    """A micro-batch of N transitions x_t → x_prev taken from Rollouts (everything indexed)."""

    x_t: torch.Tensor
    x_prev: torch.Tensor
    t: torch.Tensor
    t_prev: torch.Tensor
    model_output_old: torch.Tensor  # guided output stored at sampling time
    log_prob_old: torch.Tensor
    prompts: list[str]
    rewards: torch.Tensor  # terminal reward of each transition's trajectory
    step_index: torch.Tensor  # position of the transition in its trajectory (0 = first)

    @property
    def is_last(self) -> torch.Tensor:
        return self.t_prev < 0

    def select(self, index: torch.Tensor) -> "Transitions":
        """The transitions at `index` (a 1-D tensor of positions), every field alike."""
        values = {
            f.name: [v[i] for i in index.tolist()] if isinstance(v, list) else v[index]
            for f in dataclasses.fields(self) for v in [getattr(self, f.name)]
        }
        return dataclasses.replace(self, **values)


def gather_transitions(batch: Rollouts, traj_index: torch.Tensor, step_index: torch.Tensor) -> Transitions:
    tr = batch.trajectory
    # Everything a loss touches lives where the latents do (the model's device).
    traj_index, step_index = traj_index.to(tr.latents.device), step_index.to(tr.latents.device)
    return Transitions(
        x_t=tr.latents[step_index, traj_index],
        x_prev=tr.latents[step_index + 1, traj_index],
        t=tr.timesteps[step_index],
        t_prev=tr.prev_timesteps[step_index],
        model_output_old=tr.model_outputs[step_index, traj_index],
        log_prob_old=tr.log_probs[step_index, traj_index],
        prompts=[batch.prompts[i] for i in traj_index.tolist()],
        rewards=batch.rewards[traj_index],
        step_index=step_index,
    )


def subsample_transitions(
    num_steps: int, fraction: float, stratified: bool, generator: torch.Generator
) -> torch.Tensor:
    """Indices of the transitions trained in one trajectory, the last one always included.

    k = max(1, round(fraction · T)) transitions: the last (x_1 → x_0, where the reward enters
    directly) plus k − 1 of the others, either one per equal-width stratum ("low-variance
    subsampling", the release's default) or uniformly without replacement.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"transition fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * num_steps))
    others = num_steps - 1
    extra = min(k - 1, others)
    if extra == 0:
        chosen = torch.empty(0, dtype=torch.long)
    elif stratified:
        edges = torch.linspace(0, others, extra + 1)
        lows, highs = edges[:-1].floor().long(), edges[1:].floor().long()
        widths = (highs - lows).clamp(min=1)
        chosen = lows + (torch.rand(extra, generator=generator) * widths).long()
    else:
        chosen = torch.randperm(others, generator=generator)[:extra]
    return torch.cat([chosen.sort().values, torch.tensor([num_steps - 1])])


def chunk(indices: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


# -- the interface ------------------------------------------------------------------------------
@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, already divided by nothing: the trainer averages micro-batches
    logs: dict[str, float]


#: what a method's optimum is (DESIGN.md §4b), hence which exact target it is scored against
TARGETS = ("tilted", "reward_only", "none")


class Method(abc.ABC):
    """One fine-tuning algorithm; see the module docstring for the contract."""

    name: ClassVar[str]
    label: ClassVar[str]  # how tables and figures name it
    color: ClassVar[str]  # its colour in every figure
    Options: ClassVar[type]
    #: "tilted" (optimum p#·exp(βr)), "reward_only" (exp(β_eff r) alone) or "none" (a reward
    #: maximiser): which target :meth:`target_beta` belongs to
    target: ClassVar[str] = "none"
    #: whether round r trains on round r−1's trajectories (the ∇-GFlowNet release's behaviour)
    trains_on_previous_round: bool = False
    #: whether the loss uses Gaussian transition densities or scores (then η must be > 0)
    needs_stochastic_sampler: bool = False

    def __init__(self, options, backend: DiffusionBackend, reward, sampler: SamplerConfig, total_rounds: int = 1):
        if self.needs_stochastic_sampler and sampler.eta <= 0:
            raise ValueError(
                f"{self.name} needs a stochastic sampler (eta > 0): its loss uses the Gaussian "
                f"transition densities, which a deterministic sampler does not have"
            )
        self.options = options
        self.backend = backend
        self.reward = reward
        self.sampler = sampler
        self.total_rounds = total_rounds  # the run's budget, for schedules that span it

    @classmethod
    def target_beta(cls, options, sample_shape: Sequence[int]) -> float | None:
        """β of the exp(βr) factor of the method's own target with these options, in full-likelihood
        units (None for a reward maximiser). A method whose log-probabilities are means over the D
        dimensions of a sample reaches exp(D·β·r) for a configured β."""
        return None

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainable networks besides the LoRA (checkpointed by name)."""
        return {}

    def collect(self, prompts: Sequence[str], seeds: Sequence[int]) -> Rollouts:
        """Gradient-free rollouts with the fine-tuned model and their rewards."""
        trajectory = rollout(
            self.backend, prompts, seeds, num_steps=self.sampler.num_steps, eta=self.sampler.eta,
            guidance_scale=self.sampler.guidance_scale, record=True,
        )
        with torch.no_grad():
            rewards = self.reward(self.backend.decode(trajectory.x0), list(prompts)).float()
        return Rollouts(trajectory, list(prompts), list(seeds), rewards)

    @abc.abstractmethod
    def plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[Any]]:
        """Split a round's batch into updates, each a list of micro-batches."""

    @abc.abstractmethod
    def loss(self, microbatch: Any) -> LossOutput: ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Extra non-parameter state to checkpoint (e.g. running reward statistics)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no extra state but the checkpoint has {sorted(state)}")

    # -- shared helpers for methods that evaluate transitions -------------------------------------
    def subsampled_transition_plan(self, batch: Rollouts, generator: torch.Generator) -> list[list[Transitions]]:
        """The options' ``transition_fraction`` of each trajectory's transitions (the last always;
        ``stratified`` or uniform), cut into ``updates_per_round`` updates of ``microbatch_size``."""
        o = self.options
        num_steps = batch.trajectory.timesteps.numel()
        steps = [subsample_transitions(num_steps, o.transition_fraction, o.stratified, generator) for _ in batch.prompts]
        return iterate_transition_plan(batch, steps, o.updates_per_round, o.microbatch_size)

    def transition_coefficients(self, tr: Transitions):
        """ᾱ_t, ᾱ_prev and σ_t of each transition, in the transitions' dtype."""
        a_t, a_prev = diffusion.alpha_bars(self.backend.scheduler, tr.t, tr.t_prev)
        std = diffusion.ddim_std(a_t, a_prev, self.sampler.eta)
        return a_t.to(tr.x_t.dtype), a_prev.to(tr.x_t.dtype), std.to(tr.x_t.dtype)

    def conditions(self, prompts: Sequence[str]):
        cond = self.backend.encode_prompts(prompts)
        uncond = self.backend.null_condition(len(prompts)) if self.sampler.guidance_scale != 1.0 else None
        return cond, uncond

    def guided(self, x: torch.Tensor, t: torch.Tensor, cond, uncond) -> torch.Tensor:
        return self.backend.guided_output(x, t, cond, uncond, self.sampler.guidance_scale)

    @torch.no_grad()
    def prior_log_ratios(self, batch: Rollouts) -> torch.Tensor:
        """(T, B) log P_F^θ(x_prev | x_t) − log P_F^#(x_prev | x_t) of every sampled transition,
        summed over dimensions (full likelihood units), θ being the model that sampled it.

        θ's side is the sampler's own density (from its stored per-dimension mean); the prior's
        takes one prior forward per step.
        """
        tr = batch.trajectory
        cond, uncond = self.conditions(batch.prompts)
        dims = math.prod(tr.latents.shape[2:])
        rows = []
        for j, (t, t_prev) in enumerate(zip(tr.timesteps, tr.prev_timesteps)):
            a_t, a_prev = diffusion.alpha_bars(self.backend.scheduler, t, t_prev)
            std = diffusion.ddim_std(a_t, a_prev, self.sampler.eta)
            a_t, a_prev = a_t.to(tr.latents.dtype), a_prev.to(tr.latents.dtype)
            mean = self.kernel_mean(tr.latents[j], t, a_t, a_prev, cond, uncond, prior=True)
            prior = diffusion.gaussian_log_prob(tr.latents[j + 1], mean, std, reduction="sum")
            rows.append(tr.log_probs[j] * dims - prior)
        return torch.stack(rows)

    def kernel_mean(self, x: torch.Tensor, t: torch.Tensor, a_t, a_prev, cond, uncond, prior: bool = False) -> torch.Tensor:
        """μ(x_t) of the sampler's kernel, with θ's guided output or, with ``prior``, the prior's."""
        with self.backend.adapter(False) if prior else nullcontext():
            out = self.guided(x, t, cond, uncond)
        return diffusion.ddim_mean(out, x, a_t, a_prev, self.sampler.eta, self.backend.prediction_type)


def shuffled_transition_pairs(
    num_trajectories: int, num_steps: int, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """(N, 2) (trajectory, step) pairs: k = max(1, round(fraction · T)) random steps of every
    trajectory, then one shuffle of all pairs (DDPO's and DPOK's sampling of a round)."""
    k = max(1, round(fraction * num_steps))
    pairs = trajectory_step_pairs([torch.randperm(num_steps, generator=generator)[:k] for _ in range(num_trajectories)])
    return pairs[torch.randperm(len(pairs), generator=generator)]


def trajectory_step_pairs(steps_per_trajectory: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, 2) (trajectory, step) pairs of each trajectory b's chosen steps, trajectory-major."""
    return torch.cat([torch.stack([torch.full_like(s, b), s], dim=1) for b, s in enumerate(steps_per_trajectory)])


def pair_plan(batch: Rollouts, pairs: torch.Tensor, updates: int, microbatch_size: int) -> list[list[tuple[Transitions, torch.Tensor]]]:
    """(N, 2) (trajectory, step) pairs split into ``updates`` near-equal updates of micro-batches, each
    a (Transitions, its pairs) tuple: the pairs index whatever per-transition tensor a method adds."""
    return [
        [(gather_transitions(batch, part[:, 0], part[:, 1]), part) for part in chunk(update, microbatch_size)]
        for update in torch.tensor_split(pairs, min(updates, len(pairs)))
    ]


def iterate_transition_plan(
    batch: Rollouts, steps_per_trajectory: Iterable[torch.Tensor], updates: int, microbatch_size: int
) -> list[list[Transitions]]:
    """Flatten the chosen (trajectory, step) pairs and cut them into updates of micro-batches."""
    pairs = [(b, int(j)) for b, steps in enumerate(steps_per_trajectory) for j in steps]
    per_update = chunk(pairs, max(1, -(-len(pairs) // updates)))
    plan = []
    for update_pairs in per_update:
        micro = []
        for part in chunk(update_pairs, microbatch_size):
            traj = torch.tensor([p[0] for p in part])
            steps = torch.tensor([p[1] for p in part])
            micro.append(gather_transitions(batch, traj, steps))
        plan.append(micro)
    return plan
