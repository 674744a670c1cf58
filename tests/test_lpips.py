"""LPIPS as a feature map, against the lpips package's own values on seeded weights.

The reference distances come from lpips 0.1.4 itself (tests/reference/lpips_reference.py, run
where lpips and torchvision import)."""

from __future__ import annotations

import re

import pytest
import torch

from lpips_reference import REFERENCE, seeded_lpips_state, seeded_pairs
from nabla.hub import MissingModelsError
from nabla.metrics.features import build_features, feature_models
from nabla.metrics.images import diversity
from nabla.metrics.lpips import ALEXNET, HEADS, LpipsFeatures, lpips_distance


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    """The seeded weights saved as the two published files: torchvision's AlexNet state dict
    (features.N.*, with a classifier the loader must skip) and lpips' v0.1 heads."""
    folder = tmp_path_factory.mktemp("lpips")
    state = seeded_lpips_state(REFERENCE["shapes"])
    trunk = {re.sub(r"^net\.slice\d\.", "features.", k): v for k, v in state.items() if k.startswith("net.")}
    trunk["classifier.1.weight"] = torch.zeros(4096, 9216)[:2]  # present in torchvision's file, unused here
    torch.save(trunk, folder / ALEXNET.name)
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, folder / HEADS.name)
    return folder


def test_lpips_equals_the_lpips_package(lpips_dir):
    features = LpipsFeatures(str(lpips_dir))
    a, b = seeded_pairs()
    torch.testing.assert_close(lpips_distance(features, a, b), torch.tensor(REFERENCE["distances"]), atol=1e-6, rtol=1e-5)


def test_lpips_diversity_is_the_mean_pairwise_lpips(lpips_dir):
    features = build_features(f"lpips={lpips_dir}")
    a, b = seeded_pairs()
    images = torch.cat([a[:2], b[:1]])  # one prompt, three images
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(lpips_distance(features, images[[i]], images[[j]]).item() for i, j in pairs) / 3
    assert diversity(features(images), ["cat"] * 3, features.distance) == pytest.approx(expected, rel=1e-6)


def test_negative_heads_are_refused(lpips_dir, tmp_path):
    for weights in (ALEXNET, HEADS):
        (tmp_path / weights.name).write_bytes((lpips_dir / weights.name).read_bytes())
    heads = torch.load(tmp_path / "alex.pth")
    heads["lin2.model.1.weight"][0, 0] = -1.0
    torch.save(heads, tmp_path / "alex.pth")
    with pytest.raises(ValueError, match="non-negative"):
        LpipsFeatures(str(tmp_path))


def test_lpips_weights_are_named_when_missing(empty_hf_home):
    assert feature_models("lpips") == [ALEXNET, HEADS]
    with pytest.raises(MissingModelsError) as error:
        build_features("lpips")
    assert "2 model(s)" in str(error.value) and ALEXNET.url in str(error.value) and HEADS.url in str(error.value)
