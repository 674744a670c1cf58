"""How well the tiny prior draws each prompt word, measured (the sample grid is only looked at).

For each prompt word, from ``samples`` draws of the prior under the workflow's sampler:

* ``recognised``: the share of samples the learned reward's OpenMoji classifier (trained on the
  prompt words, :mod:`nabla.rewards.learned`) labels with the prompt's word, σ(logit) > ½; beside
  it ``recognised_data``, the same share on the word's own training images: the classifier's
  recall, the most a perfect prior could score;
* ``diversity``: the mean pairwise cosine distance of the samples' evaluation features (the
  workflow's diversity metric), beside ``diversity_data`` on the word's training images;
* ``coverage``: the share of the word's training images whose k-nearest-neighbour ball among
  those images holds at least one sample (Naeem et al., 2020, "Reliable fidelity and diversity
  metrics for generative models"): 1 when the samples reach every kind of emoji the word covers;
* ``faint``: the share of samples with a pixel standard deviation under ``FAINT_STD``, the
  washed-out outline some starting noises give under every prompt (the data's share beside it).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from nabla.data import openmoji
from nabla.data.prompts import has_word, prompt_splits
from nabla.metrics.images import cosine_distances, mean_pairwise_distance
from nabla.rewards.learned import EmojiClassifier, to_images

#: a sample whose pixels vary less than this (images in [0, 1]) is a faint outline
FAINT_STD = 0.13
#: the neighbour whose distance sets each training image's ball (Naeem et al. use k = 5 on
#: thousands of images; a word here covers 10–263)
COVERAGE_K = 3


def coverage(real: torch.Tensor, fake: torch.Tensor, k: int = COVERAGE_K) -> float:
    """Share of the (N, D) ``real`` features whose ball to their k-th nearest other real feature
    (cosine distance) contains at least one of the (M, D) ``fake`` features."""
    if len(real) <= k:
        raise ValueError(f"coverage with k={k} needs more than {k} real images, got {len(real)}")
    among_real = cosine_distances(real, real)
    among_real.fill_diagonal_(float("inf"))  # a point is not its own neighbour
    radius = among_real.kthvalue(k, dim=1).values
    nearest_fake = cosine_distances(real, fake).min(dim=1).values
    return float((nearest_fake <= radius).double().mean())


def recognised_share(classifier: EmojiClassifier, images: torch.Tensor, word: str) -> float:
    """Share of ``images`` whose classifier probability of ``word`` exceeds ½."""
    logits = classifier(images)[:, classifier.classes.index(word)]
    return float((logits > 0).double().mean())


def faint_share(images: torch.Tensor) -> float:
    return float((images.flatten(1).std(dim=1) < FAINT_STD).double().mean())


@torch.no_grad()
def word_quality(
    samples: torch.Tensor, data: torch.Tensor, word: str, classifier: EmojiClassifier, features: torch.nn.Module
) -> dict[str, float]:
    """The row of one word: its ``samples`` and its training images ``data``, both (N, 3, H, W) in [0, 1]."""
    sample_features, data_features = features(samples), features(data)
    return {
        "recognised": recognised_share(classifier, samples, word),
        "recognised_data": recognised_share(classifier, data, word),
        "diversity": mean_pairwise_distance(sample_features),
        "diversity_data": mean_pairwise_distance(data_features),
        "coverage": coverage(data_features, sample_features),
        "faint": faint_share(samples),
        "faint_data": faint_share(data),
    }


@torch.no_grad()
def prior_quality(
    backend,
    training_images: openmoji.OpenMojiSet,
    classifier: EmojiClassifier,
    features: torch.nn.Module,
    seeds: Sequence[int],
    sampler: dict,
) -> pd.DataFrame:
    """One row per prompt word (train, validation and evaluation prompts): the prior's samples
    under ``sampler`` (num_steps, eta, guidance_scale) at ``seeds`` against the word's images in
    ``training_images`` (the prior's training split)."""
    from nabla.sampling import sample_images

    rows = []
    for word, split in prompt_splits().items():
        index = [i for i, cap in enumerate(training_images.captions) if has_word(cap, word)]
        data = to_images(training_images.images[index])
        samples = sample_images(backend, [word] * len(seeds), list(seeds), **sampler)
        rows.append({"prompt": word, "split": split, "samples": len(seeds), "train_images": len(index),
                     **word_quality(samples, data, word, classifier, features)})
    return pd.DataFrame(rows)


def quality_markdown(table: pd.DataFrame, caption: str) -> str:
    """The table as Markdown, shares as percentages, each measure beside its data reference."""
    lines = [caption, "",
             "| prompt | split | recognised | (data) | diversity | (data) | coverage | faint | (data) | training images |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(
            f"| {r.prompt} | {r.split} | {r.recognised:.0%} | {r.recognised_data:.0%} | {r.diversity:.3f} | "
            f"{r.diversity_data:.3f} | {r.coverage:.0%} | {r.faint:.0%} | {r.faint_data:.0%} | {r.train_images} |"
        )
    return "\n".join(lines) + "\n"
