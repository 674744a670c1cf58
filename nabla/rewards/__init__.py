"""Differentiable rewards, found by name: ``build_reward("colorfulness")``.

Adding a reward: one module defining a ``Reward`` subclass decorated with ``@register_reward``,
and one import line below (importing the module is what registers it).
"""

from nabla.rewards.base import REWARDS, Reward, build_reward, register_reward, reward_class, reward_options

from nabla.rewards import toy2d  # noqa: F401  linear, quadratic
from nabla.rewards import colorfulness  # noqa: F401  colorfulness
from nabla.rewards import learned  # noqa: F401  emoji_class
from nabla.rewards import aesthetic  # noqa: F401  aesthetic (sd15)
from nabla.rewards import hpsv2  # noqa: F401  hpsv2 (sd15)
from nabla.rewards import imagereward  # noqa: F401  imagereward (sd15)

__all__ = ["REWARDS", "Reward", "build_reward", "register_reward", "reward_class", "reward_options"]
