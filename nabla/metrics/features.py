"""Feature extractors for the image metrics: images in [0, 1], (B, 3, H, W) → features (B, D).

Diversity is the mean pairwise cosine distance between features, FID-to-prior the Fréchet
distance between feature sets (:mod:`nabla.metrics.images`). An extractor is named by a spec,
``NAME`` or ``NAME=MODEL`` (``build_features``):

- ``emoji=DIR`` (tiny): the evaluation network the workflow trains on OpenMoji
  (``python -m nabla train-features``): the same CNN family as the learned reward, but a separate
  model — other words (every frequent caption word, not the prompt words), other seed — so a
  fine-tuned model cannot score well on diversity or FID by exploiting its own reward model;
- ``dreamsim`` (sd15, the paper's diversity): DreamSim's ensemble embedding, whose cosine
  distance is DreamSim's distance (:mod:`nabla.models.dreamsim`);
- ``clip`` (sd15): CLIP ViT-L/14's normalised image embedding;
- ``lpips`` (sd15, diversity only): LPIPS on AlexNet as a feature map whose squared Euclidean
  distances are LPIPS (:mod:`nabla.metrics.lpips`); an extractor's ``distance`` attribute says
  which distance diversity averages (cosine where it has none);
- ``inception`` (sd15): the 2048-d pool features of the TensorFlow FID Inception-v3, the
  TorchScript port that StyleGAN2-ADA and clean-fid use, so FIDs compare with the literature's.

The sd15 models load only from local caches (:mod:`nabla.hub`); ``required_models`` lists them
for ``fetch-models`` and its offline check.
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
from nabla.hub import HubModel, UrlModel, check_available, resolve
from nabla.metrics.lpips import LpipsFeatures
from nabla.models.clip import CLIP_L14, ClipImageEmbedding, clip_hub_model, load_clip
from nabla.models.dreamsim import DINO_VITB16, RELEASES, load_dreamsim
from nabla.rewards.learned import load_emoji_classifier, train_emoji_classifier

INCEPTION = UrlModel(
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    purpose="FID features: Inception-v3, TorchScript",
)

#: caption words that name no visual content
STOPWORDS = frozenset({"with", "and", "of", "the", "a", "in", "on", "for", "sign", "symbol"})


def frequent_words(captions: Sequence[str], min_count: int = 20) -> tuple[str, ...]:
    """Caption words on at least ``min_count`` emoji (stopwords and digits out), most common first."""
    counts = Counter(w for c in captions for w in set(re.findall(r"[a-z]+", c.lower())))
    return tuple(w for w, n in counts.most_common() if n >= min_count and w not in STOPWORDS and len(w) > 1)


class EmojiFeatures(nn.Module):
    """The globally pooled last feature map of the OpenMoji evaluation network (frozen)."""

    name = "emoji"

    def __init__(self, model_dir: str | os.PathLike | None = None):
        super().__init__()
        if model_dir is None:
            raise ValueError("the emoji features need their folder: emoji=DIR (python -m nabla train-features)")
        self.network = load_emoji_classifier(model_dir)

    @staticmethod
    def required_models(model_dir: str | None = None) -> list:
        return []  # trained by the workflow, not fetched

    @staticmethod
    def local_folders(model_dir: str | None = None) -> list:
        """The folder (nabla.hub.LocalFolder) and the command that trains it."""
        from nabla.rewards.learned import classifier_folder

        return [] if model_dir is None else [
            classifier_folder(model_dir, "the emoji evaluation features", "train-features", "train_tiny_features")]

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


class ClipFeatures(nn.Module):
    """CLIP's L2-normalised image embedding (ViT-L/14 by default; ``clip=REPO`` for another)."""

    name = "clip"

    def __init__(self, model: str = CLIP_L14):
        super().__init__()
        self.embedding = ClipImageEmbedding(load_clip(self.required_models(model)[0])).requires_grad_(False)

    @staticmethod
    def required_models(model: str = CLIP_L14) -> list[HubModel]:
        return [clip_hub_model(model, "image metrics: CLIP image features")]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(images.float())


class InceptionFeatures(nn.Module):
    """FID's Inception-v3 pool features (2048-d). The TorchScript network takes images of any size
    in [0, 255] and resizes them to 299×299 itself; ``inception=PATH`` loads another copy."""

    name = "inception"

    def __init__(self, model: str | None = None):
        super().__init__()
        self.network = torch.jit.load(str(resolve(self.required_models(model)[0])), map_location="cpu").eval()

    @staticmethod
    def required_models(model: str | None = None) -> list:
        return [HubModel(model, purpose=INCEPTION.purpose) if model else INCEPTION]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.float().clamp(0, 1) * 255, return_features=True).flatten(1)


class DreamSimFeatures(nn.Module):
    """DreamSim's ensemble embedding (1792-d, centred, unit norm), so that diversity's cosine
    distance is DreamSim's distance; ``dreamsim=DIR``: a folder holding the release zip and DINO's
    file under their published names."""

    name = "dreamsim"

    def __init__(self, model: str | None = None):
        super().__init__()
        release, dino = check_available(self.required_models(model)).values()
        self.embedding = load_dreamsim(release, dino).requires_grad_(False)

    @staticmethod
    def required_models(model: str | None = None) -> list:
        files = [RELEASES["ensemble"], DINO_VITB16]
        return files if model is None else [f.in_folder(model) for f in files]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(images)


FEATURES = {cls.name: cls for cls in (EmojiFeatures, ClipFeatures, DreamSimFeatures, LpipsFeatures, InceptionFeatures)}


def _parse(spec: str) -> tuple[type, str | None]:
    name, _, model = spec.partition("=")
    if name not in FEATURES:
        raise ValueError(f"unknown feature extractor '{name}'; known: {', '.join(FEATURES)} (spec NAME or NAME=MODEL)")
    return FEATURES[name], model or None


def build_features(spec: str) -> nn.Module:
    """A feature extractor from its spec, ``NAME`` or ``NAME=MODEL`` (e.g. ``emoji=runs/tiny/features``)."""
    cls, model = _parse(spec)
    return cls(model) if model else cls()


def feature_models(spec: str) -> list:
    """The pretrained models an extractor loads (for fetch-models and the offline check)."""
    cls, model = _parse(spec)
    return cls.required_models(model) if model else cls.required_models()


def feature_folders(spec: str) -> list:
    """The folders this project builds that an extractor loads (nabla.hub.LocalFolder; emoji's)."""
    cls, model = _parse(spec)
    local_folders = getattr(cls, "local_folders", None)
    return local_folders(model) if local_folders else []
