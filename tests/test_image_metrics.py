"""Diversity and Fréchet distance against hand-computed values and an independent formula."""

import math

import numpy as np
import pytest
import torch

from nabla.metrics.images import diversity, fid_to_prior, frechet_distance, mean_pairwise_distance


def test_pairwise_cosine_distance_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: orthogonal (1), and twice 45° (1 − 1/√2)
    assert mean_pairwise_distance(f) == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3)
    assert mean_pairwise_distance(torch.ones(4, 3)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least two"):
        mean_pairwise_distance(torch.ones(1, 3))


def test_pairwise_squared_euclidean_distance_by_hand():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    # pairs: 25, 1, and 9 + 9 = 18
    assert mean_pairwise_distance(f, "squared_euclidean") == pytest.approx((25 + 1 + 18) / 3)
    with pytest.raises(ValueError, match="unknown distance 'l1'"):
        mean_pairwise_distance(f, "l1")


def test_diversity_averages_prompts_not_images():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # "a": one orthogonal pair → 1; "b": three identical images → 0; mean over prompts 0.5
    assert diversity(f, ["a", "a", "b", "b", "b"]) == pytest.approx(0.5)


def frechet_numpy(a, b):
    """Independent form: Tr((Σ_a Σ_b)^½) as Σ √λ of the (non-symmetric) product's eigenvalues."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = np.cov(a.T), np.cov(b.T)
    eig = np.linalg.eigvals(ca @ cb)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def test_frechet_distance_matches_the_eigenvalue_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=g) @ torch.randn(5, 5, generator=g)
    b = torch.randn(150, 5, generator=g) * 2 + 1
    assert frechet_distance(a, b) == pytest.approx(frechet_numpy(a, b), rel=1e-8)


def test_frechet_distance_is_zero_to_itself_and_adds_a_squared_shift():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 16, generator=g)  # fewer images than dimensions: rank-deficient covariance
    # zero eigenvalues of the rank-8 covariance leave ~√ε of the trace (≈ 16) as error
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-5)
    shift = torch.full((16,), 0.5)
    assert frechet_distance(a, a + shift) == pytest.approx(16 * 0.25, abs=1e-5)


def test_fid_to_prior_per_prompt_and_pooled():
    g = torch.Generator().manual_seed(2)
    prior = torch.randn(12, 4, generator=g)
    prompts = ["a"] * 6 + ["b"] * 6
    same = fid_to_prior(prior.clone(), prior, prompts)
    assert same["fid_to_prior"] == pytest.approx(0.0, abs=1e-5) and same["fid_to_prior_pooled"] == pytest.approx(0.0, abs=1e-5)
    moved = prior.clone()
    moved[:6] += 1.0  # only prompt "a" changes: per-prompt FID (4 + 0) / 2
    assert fid_to_prior(moved, prior, prompts)["fid_to_prior"] == pytest.approx(2.0, abs=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        fid_to_prior(prior[:6], prior, prompts)


def test_frequent_words_by_hand():
    from nabla.metrics.features import frequent_words

    captions = ["red heart", "heart with arrow", "cat face", "red apple", "heart sign"]
    assert frequent_words(captions, min_count=2) == ("heart", "red")  # "with"/"sign" are stopwords


def test_unknown_feature_extractor_is_named():
    from nabla.metrics.features import build_features

    with pytest.raises(ValueError, match="unknown feature extractor 'dreamsim2'; known: emoji, clip, dreamsim, lpips, inception"):
        build_features("dreamsim2")
    with pytest.raises(ValueError, match="emoji=DIR"):
        build_features("emoji")


@pytest.mark.slow
def test_feature_network_is_separate_from_the_reward_and_embeds_images(openmoji_cache, tmp_path):
    import json

    from nabla.cli import main
    from nabla.data.prompts import TRAIN_WORDS
    from nabla.metrics.features import build_features

    main(["train-features", "--out", str(tmp_path / "f"), "--data-cache", str(openmoji_cache), "--steps", "20"])
    meta = json.loads((tmp_path / "f" / "emoji_classifier.json").read_text())
    assert meta["training"]["seed"] == 1 and len(meta["classes"]) > len(TRAIN_WORDS)
    extractor = build_features(f"emoji={tmp_path / 'f'}")
    images = torch.rand(5, 3, 32, 32)
    features = extractor(images)
    assert features.shape == (5, 128) and not features.requires_grad
    assert torch.allclose(extractor(images[:2]), features[:2], atol=1e-6)  # per-image, batch-independent


def test_clip_features_are_the_normalised_clip_image_embedding(aesthetic_stand_ins):
    from transformers import CLIPModel

    from nabla.metrics.features import build_features
    from nabla.models.clip import clip_preprocess

    folder = aesthetic_stand_ins["clip_model"]
    images = torch.rand(4, 3, 40, 40)
    features = build_features(f"clip={folder}")(images)
    want = CLIPModel.from_pretrained(folder).get_image_features(pixel_values=clip_preprocess(images, 32))
    want = getattr(want, "pooler_output", want)
    torch.testing.assert_close(features, want / want.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert not features.requires_grad


def test_inception_features_feed_the_network_images_in_0_255(inception_stand_in):
    from nabla.metrics.features import build_features

    images = torch.rand(3, 3, 16, 16)
    features = build_features(f"inception={inception_stand_in}")(images)
    want = torch.stack([images.amax(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3))], dim=1) * 255
    torch.testing.assert_close(features, want)


def test_sd15_feature_models_missing_offline_are_named(empty_hf_home):
    from nabla.hub import MissingModelsError
    from nabla.metrics.features import build_features

    with pytest.raises(MissingModelsError, match="inception-2015-12-05.pt \\(FID features"):
        build_features("inception")
    with pytest.raises(MissingModelsError, match="nabla-test/no-clip \\(image metrics: CLIP"):
        build_features("clip=nabla-test/no-clip")


def test_evaluation_names_every_missing_feature_model_before_loading_the_run(empty_hf_home):
    from nabla.evaluation import evaluate_run
    from nabla.hub import MissingModelsError

    with pytest.raises(MissingModelsError, match="2 model") as error:  # not the absent run folder's error
        evaluate_run(empty_hf_home / "no-run", empty_hf_home / "m.json", features="clip=nabla-test/no-clip", fid_features="inception")
    assert "nabla-test/no-clip" in str(error.value) and "inception-2015-12-05.pt" in str(error.value)
