"""Feature extractors for the image metrics: images in [0, 1], (B, 3, H, W) → features (B, D).

At the tiny scale the features are those of an evaluation network the workflow trains on
OpenMoji (``python -m nabla train-features``): the same CNN family as the learned reward, but a
separate model — other words (every frequent caption word, not the prompt words), other seed —
so a fine-tuned model cannot score well on diversity or FID by exploiting its own reward model.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from nabla.data import openmoji
from nabla.rewards.learned import load_emoji_classifier, train_emoji_classifier

#: caption words that name no visual content
STOPWORDS = frozenset({"with", "and", "of", "the", "a", "in", "on", "for", "sign", "symbol"})


def frequent_words(captions: Sequence[str], min_count: int = 20) -> tuple[str, ...]:
    """Caption words on at least ``min_count`` emoji (stopwords and digits out), most common first."""
    counts = Counter(w for c in captions for w in set(re.findall(r"[a-z]+", c.lower())))
    return tuple(w for w, n in counts.most_common() if n >= min_count and w not in STOPWORDS and len(w) > 1)


class EmojiFeatures(nn.Module):
    """The globally pooled last feature map of the OpenMoji evaluation network (frozen)."""

    name = "emoji"

    def __init__(self, model_dir: str | os.PathLike):
        super().__init__()
        self.network = load_emoji_classifier(model_dir)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.embed(images.to(self.network.head.weight.dtype))


def train_feature_network(
    data_cache: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 1, steps: int = 600,
    min_count: int = 20, progress: bool = False,
) -> Path:
    """Train the tiny scale's evaluation network on every frequent caption word; save to ``out_dir``."""
    words = frequent_words(openmoji.load_openmoji(data_cache).captions, min_count)
    return train_emoji_classifier(data_cache, out_dir, seed=seed, steps=steps, progress=progress, classes=words)


FEATURES = {"emoji": EmojiFeatures}


def build_features(name: str, **options) -> nn.Module:
    """A feature extractor by name (``emoji`` at tiny; the sd15 extractors are not written yet)."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature extractor '{name}'; known: {', '.join(FEATURES)}")
    return FEATURES[name](**options)
