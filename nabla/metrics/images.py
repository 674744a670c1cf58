"""Image-set metrics on feature vectors: diversity and Fréchet distance, per prompt and pooled.

Every function takes features already extracted (``nabla.metrics.features``), so the same code
serves the tiny scale's OpenMoji feature network and CLIP / LPIPS / Inception at sd15.

- diversity: mean pairwise distance over the K images of a prompt, averaged over prompts (the
  paper's per-prompt diversity): cosine 1 − cos(f_i, f_j), or squared Euclidean for LPIPS, whose
  feature map makes it exactly ‖φ_i − φ_j‖² (:mod:`nabla.metrics.lpips`);
- FID-to-prior: Fréchet distance between the fine-tuned model's and the prior's features,
  per prompt then averaged (the paper's definition), and once pooled over all prompts.
"""

from __future__ import annotations

from typing import Sequence

import torch


#: distances between feature vectors that diversity can average
DISTANCES = ("cosine", "squared_euclidean")


def cosine_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) matrix of 1 − cos(a_i, b_j), in float64."""
    unit_a = torch.nn.functional.normalize(a.double(), dim=1)
    unit_b = torch.nn.functional.normalize(b.double(), dim=1)
    return 1 - unit_a @ unit_b.T


def mean_pairwise_distance(features: torch.Tensor, distance: str = "cosine") -> float:
    """Mean distance over the K(K−1)/2 pairs i < j of a (K, D) set (K ≥ 2): 1 − cos(f_i, f_j)
    (``cosine``), or ‖f_i − f_j‖² (``squared_euclidean``: LPIPS in its feature map)."""
    if features.shape[0] < 2:
        raise ValueError("diversity needs at least two images")
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; known: {', '.join(DISTANCES)}")
    f = features.double()
    pairwise = cosine_distances(f, f) if distance == "cosine" else torch.cdist(f, f).square()
    i, j = torch.triu_indices(len(f), len(f), offset=1)
    return float(pairwise[i, j].mean())


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½) between two (N, D) feature sets.

    The symmetric form of the cross term keeps every matrix square root that of a PSD matrix, so
    the rank-deficient covariances of a few images per prompt need no regulariser; their zero
    eigenvalues leave an error of about √(float64 ε) ≈ 1e-8 relative to the traces.
    """
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("a Fréchet distance needs at least two feature vectors per set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    # ≥ 0 in exact arithmetic; clamp the float error of identical sets at zero
    return max(0.0, float((mu_a - mu_b).square().sum() + torch.trace(cov_a + cov_b - 2 * cross)))


def _groups(prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Indices of each distinct prompt, in first-seen order."""
    return {p: torch.tensor([i for i, q in enumerate(prompts) if q == p]) for p in dict.fromkeys(prompts)}


def diversity(features: torch.Tensor, prompts: Sequence[str], distance: str = "cosine") -> float:
    """Per-prompt mean pairwise distance (cosine by default), averaged over prompts."""
    values = [mean_pairwise_distance(features[idx], distance) for idx in _groups(prompts).values()]
    return float(sum(values) / len(values))


def fid_to_prior(features: torch.Tensor, prior_features: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Fréchet distance to the prior's images of the same prompts: per-prompt mean and pooled."""
    if features.shape != prior_features.shape:
        raise ValueError(f"feature sets differ in shape: {tuple(features.shape)} vs {tuple(prior_features.shape)}")
    per_prompt = [frechet_distance(features[idx], prior_features[idx]) for idx in _groups(prompts).values()]
    return {
        "fid_to_prior": float(sum(per_prompt) / len(per_prompt)),
        "fid_to_prior_pooled": frechet_distance(features, prior_features),
    }
