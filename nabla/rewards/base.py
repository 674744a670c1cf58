"""What a reward is, and the registry that finds one by name.

A reward is a frozen ``nn.Module`` mapping a batch of samples (images (B, 3, H, W) in [0, 1],
or toy points (B, 2)) and their prompts to one differentiable value per sample, shape (B,).
Its own parameters never train; gradients flow to the samples only.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence, TypeVar

import torch
from torch import nn


class Reward(nn.Module):
    """Base class: set ``name`` and ``scales``, implement ``forward(samples, prompts)``."""

    #: registry key, e.g. "colorfulness"
    name: str = ""
    #: the scales it applies to: any of "toy2d", "tiny", "sd15" (a run of another scale is refused
    #: before anything loads: nabla.preflight)
    scales: tuple[str, ...] = ()

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """One reward per sample, shape (B,), differentiable w.r.t. ``samples``."""
        raise NotImplementedError

    @staticmethod
    def required_models(**options: Any) -> list:
        """The pretrained models (:class:`nabla.hub.HubModel`) the reward loads with these options."""
        return []

    @staticmethod
    def local_folders(**options: Any) -> list:
        """The folders this project builds that the reward loads with these options
        (:class:`nabla.hub.LocalFolder`, each with the command that builds it)."""
        return []

    def require_prompts(self, samples: torch.Tensor, prompts: Sequence[str] | None) -> list[str]:
        """The prompts, one per sample, for rewards that score an image against its prompt."""
        if prompts is None or len(prompts) != len(samples):
            raise ValueError(f"{self.name} scores each image against its prompt: got {len(samples)} images and "
                             f"{'no' if prompts is None else len(prompts)} prompts")
        return list(prompts)

    def freeze(self) -> "Reward":
        """No parameter trains and the module is in eval mode (returns self)."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Reward":
        # A reward inside a trained module must not switch to train mode (dropout, norm stats)
        # when its owner calls .train(): it stays in eval mode whatever is asked.
        return super().train(False)


#: every registered reward class by name
REWARDS: dict[str, type[Reward]] = {}

R = TypeVar("R", bound=type[Reward])


def register_reward(cls: R) -> R:
    """Class decorator: add a Reward subclass to ``REWARDS`` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Reward)):
        raise TypeError(f"{cls!r} is not a Reward subclass")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REWARDS and REWARDS[cls.name] is not cls:
        raise ValueError(f"reward name {cls.name!r} is already taken by {REWARDS[cls.name].__name__}")
    REWARDS[cls.name] = cls
    return cls


def reward_options(cls: type[Reward]) -> dict[str, Any]:
    """The options a reward's constructor takes, with their defaults (inspect.Parameter.empty if required)."""
    params = inspect.signature(cls.__init__).parameters
    named = (p for n, p in params.items() if n != "self")
    return {p.name: p.default for p in named if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def reward_class(name: str) -> type[Reward]:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")
    return REWARDS[name]


def build_reward(name: str, **options: Any) -> Reward:
    """The reward registered as ``name``, built with ``options``, frozen and in eval mode.

    Raises ValueError listing the known names for an unknown name, and TypeError naming any
    option the reward does not take or a required one left out (checked here, so the message
    names the reward rather than its class's __init__).
    """
    cls = reward_class(name)
    known = reward_options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"reward {name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(known) or 'no options'}"
        )
    missing = [k for k, default in known.items() if default is inspect.Parameter.empty and k not in options]
    if missing:
        raise TypeError(f"reward {name!r} needs option(s) {', '.join(map(repr, missing))}")
    return cls(**options).freeze()


__all__ = ["Reward", "REWARDS", "register_reward", "reward_class", "reward_options", "build_reward"]
