"""What the checkpoint converters (open_clip, ImageReward, DreamSim → transformers) share."""

from __future__ import annotations

from typing import Sequence


def unplaced_keys_error(keys: Sequence[str], checkpoint: str, target: str = "the transformers port") -> ValueError:
    """The error naming a checkpoint's keys that the target model has no place for (the first 8),
    raised rather than loading another network than the one published."""
    shown = ", ".join(keys[:8]) + (" …" if len(keys) > 8 else "")
    return ValueError(f"{len(keys)} key(s) of {checkpoint} have no place in {target}: {shown}")
