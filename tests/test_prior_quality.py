"""The prior-quality measures against direct computations."""

import math

import pytest
import torch

from nabla.data.prompts import prompt_splits
from nabla.metrics.images import cosine_distances
from nabla.prior_quality import coverage, faint_share, recognised_share


def brute_force_coverage(real, fake, k):
    """Naeem et al.'s coverage written as loops over pairs."""
    def dist(a, b):
        return 1 - float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))

    covered = 0
    for i, r in enumerate(real):
        others = sorted(dist(r, q) for j, q in enumerate(real) if j != i)
        radius = others[k - 1]
        covered += any(dist(r, f) <= radius for f in fake)
    return covered / len(real)


def test_coverage_equals_the_loop_definition():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(20, 5, generator=g, dtype=torch.float64)
    for shift, k in ((0.0, 3), (0.6, 3), (0.6, 1), (1.5, 5)):
        fake = torch.randn(15, 5, generator=g, dtype=torch.float64) + shift
        expected = brute_force_coverage(real, fake, k)
        assert coverage(real, fake, k) == pytest.approx(expected, abs=1e-12)
    # the cases differ: the measure is not constant on them
    near = coverage(real, real[:10] * 1.01, 3)
    far = coverage(real, -real[:1].repeat(5, 1), 3)
    assert near >= 0.5 and far < near


def test_coverage_of_the_real_set_itself_is_one_and_of_one_point_is_small():
    real = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    assert coverage(real, real) == 1.0
    one = coverage(real, real[:1])  # covers its own point and those whose balls hold it, not all
    assert 1 / 30 <= one < 0.5
    with pytest.raises(ValueError, match="more than 3"):
        coverage(real[:3], real)


def test_cosine_distances():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(cosine_distances(a, a), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    assert cosine_distances(a, -a)[0, 0] == pytest.approx(2.0)


class _Fixed(torch.nn.Module):
    """A 'classifier' whose logits are the images' channel means minus ½ (one class per channel)."""

    classes = ("red", "green", "blue")

    def forward(self, images):
        return images.mean(dim=(2, 3)) - 0.5


def test_recognised_share_counts_probability_above_one_half():
    images = torch.zeros(4, 3, 2, 2)
    images[:3, 1] = 0.9  # three of four are "green"
    assert recognised_share(_Fixed(), images, "green") == 0.75
    assert recognised_share(_Fixed(), images, "red") == 0.0


def test_faint_share():
    flat = torch.full((3, 3, 4, 4), 0.9)
    contrast = torch.zeros(1, 3, 4, 4)
    contrast[..., :2] = 1.0  # std 0.5
    assert faint_share(torch.cat([flat, contrast])) == 0.75


def test_every_prompt_word_is_in_one_split():
    splits = prompt_splits()
    assert set(splits.values()) == {"train", "validation", "evaluation"}
    assert len(splits) == 12
