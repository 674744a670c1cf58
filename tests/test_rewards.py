"""The rewards: registry, toy closed forms, colourfulness and the learned emoji classifier.

The classifier is trained for only a few steps here (file round trip and API); the quality of
a full training is measured by `python -m nabla train-reward`, not by a test.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nabla.data.prompts import TRAIN_WORDS
from nabla.data.toy2d import circle_mixture, tilt_linear, tilt_quadratic
from nabla.rewards import REWARDS, Reward, build_reward
from nabla.rewards.colorfulness import colorfulness
from nabla.rewards.learned import (
    META_FILE,
    WEIGHTS_FILE,
    EmojiClassifier,
    load_emoji_classifier,
    random_shift,
    train_emoji_classifier,
)

torch.set_num_threads(1)

PRIOR = circle_mixture()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, openmoji_cache) -> Path:
    """A classifier trained for 30 small steps (seconds)."""
    folder = tmp_path_factory.mktemp("emoji_classifier")
    torch.manual_seed(0)
    return train_emoji_classifier(openmoji_cache, folder / "model", steps=30, batch_size=16)


@pytest.fixture()
def make_reward(model_dir, aesthetic_stand_ins, hps_stand_ins, imagereward_stand_ins):
    """Build any registered reward, with small stand-ins for those that load models."""
    options = {"emoji_class": {"model_dir": model_dir}, "aesthetic": aesthetic_stand_ins, "hpsv2": hps_stand_ins,
               "imagereward": imagereward_stand_ins}
    return lambda name: build_reward(name, **options.get(name, {}))


def samples_for(reward: Reward, batch: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    if "toy2d" in reward.scales:
        return torch.randn(batch, 2)
    return torch.rand(batch, 3, 32, 32)


# -- registry -----------------------------------------------------------------------------------
def test_registry_names_and_scales():
    assert {"linear", "quadratic", "colorfulness", "emoji_class"} <= set(REWARDS)
    for name, cls in REWARDS.items():
        assert issubclass(cls, Reward) and cls.name == name
        assert cls.scales and set(cls.scales) <= {"toy2d", "tiny", "sd15"}


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown reward 'nope'.*colorfulness.*linear"):
        build_reward("nope")


def test_unknown_and_missing_options_are_named():
    with pytest.raises(TypeError, match="'centre'"):
        build_reward("quadratic", centre=(1.0, 0.0))
    with pytest.raises(TypeError, match="'model_dir'"):
        build_reward("emoji_class")


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_shape_gradient_and_frozen(name, make_reward):
    reward = make_reward(name)
    x = samples_for(reward).requires_grad_(True)
    value = reward(x, ["heart"] * len(x))
    assert value.shape == (len(x),)
    value.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.parameters())
    assert all(p.grad is None for p in reward.parameters())
    reward.train()  # an owner switching to train mode must not switch the reward
    assert not reward.training and all(not m.training for m in reward.modules())


# -- toy rewards --------------------------------------------------------------------------------
def test_linear_and_quadratic_values_by_hand():
    x = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    lin = build_reward("linear", w=(2.0, -1.0))
    assert torch.allclose(lin(x), torch.tensor([0.0, -6.5]))
    assert torch.allclose(build_reward("linear")(x), torch.tensor([1.0, -3.0]))  # w = (1, 0)
    quad = build_reward("quadratic", center=(1.0, 1.0))
    assert torch.allclose(quad(x), torch.tensor([-0.5, -(16 + 0.25) / 2]))
    assert torch.allclose(build_reward("quadratic")(x), -0.5 * x.square().sum(1))


@pytest.mark.parametrize(
    "name, options, tilt_fn, key",
    [
        ("linear", {"w": (0.5, -0.3)}, tilt_linear, "w"),
        ("quadratic", {"center": (2.0, -1.0)}, tilt_quadratic, "center"),
    ],
)
def test_exact_target_is_the_tilt_and_matches_importance_weights(name, options, tilt_fn, key):
    beta = 1.5
    reward = build_reward(name, **options)
    target = reward.exact_target(PRIOR, beta)
    expected = tilt_fn(PRIOR, options[key], beta)
    for field in ("means", "stds", "weights"):
        assert torch.allclose(getattr(target, field), getattr(expected, field))
    # independent check: prior samples reweighted by exp(β r) have the target's mean
    gen = torch.Generator().manual_seed(0)
    x, _ = PRIOR.sample(200_000, generator=gen)
    w = torch.softmax(beta * reward(x), dim=0)
    target_mean = target.weights @ target.means
    assert torch.allclose(w @ x, target_mean, atol=0.05)


def test_reward_only_targets():
    target = build_reward("quadratic", center=(1.0, -2.0)).reward_only_target(4.0)
    assert torch.allclose(target.means, torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    assert torch.allclose(target.stds, torch.tensor([0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="not normalisable"):
        build_reward("linear").reward_only_target(1.0)


# -- colourfulness ------------------------------------------------------------------------------
def numpy_colorfulness(image: np.ndarray) -> float:
    """Hasler & Süsstrunk on one H×W×3 image, written independently of the torch version."""
    r, g, b = image[..., 0].astype(np.float64), image[..., 1], image[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    return math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())


def test_colorfulness_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.random((4, 5, 6, 3))
    got = colorfulness(torch.from_numpy(images).permute(0, 3, 1, 2), eps=0.0)
    assert np.allclose(got.numpy(), [numpy_colorfulness(im) for im in images], atol=1e-10)
    reward = build_reward("colorfulness")  # default eps shifts the value by ~1e-4 at most
    assert np.allclose(reward(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy(), got.numpy(), atol=1e-3)


def test_colorfulness_grey_is_zero_saturated_is_large():
    grey = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    value = build_reward("colorfulness")(grey)
    assert value.item() < 1e-3
    value.sum().backward()
    assert torch.isfinite(grey.grad).all()
    stripes = torch.zeros(1, 3, 8, 8)  # half pure red, half pure blue: near the maximum
    stripes[:, 0, :4] = 1.0
    stripes[:, 2, 4:] = 1.0
    assert colorfulness(stripes).item() > 0.8
    assert colorfulness(torch.rand(1, 3, 8, 8)).item() < colorfulness(stripes).item()


# -- learned emoji classifier -------------------------------------------------------------------
def test_classifier_files_and_round_trip(model_dir):
    assert (model_dir / WEIGHTS_FILE).is_file()
    meta = json.loads((model_dir / META_FILE).read_text())
    assert meta["classes"] == list(TRAIN_WORDS)
    assert {"final_train_loss", "heldout_accuracy", "heldout_per_class"} <= set(meta["metrics"])
    assert math.isfinite(meta["metrics"]["final_train_loss"])
    model = load_emoji_classifier(model_dir)
    assert sum(p.numel() for p in model.parameters()) < 300_000
    again = load_emoji_classifier(model_dir)
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(x), again(x))
    fresh = EmojiClassifier(model.cfg)
    assert not torch.equal(fresh(x), model(x))  # the weights really came from the file


def test_missing_model_dir_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m nabla train-reward --out .*nowhere"):
        build_reward("emoji_class", model_dir=tmp_path / "nowhere")


def test_emoji_class_is_log_sigmoid_of_the_logit(model_dir):
    reward = build_reward("emoji_class", model_dir=model_dir, category="cat")
    x = torch.rand(3, 3, 32, 32)
    logits = reward.classifier(x)
    expected = torch.nn.functional.logsigmoid(logits[:, TRAIN_WORDS.index("cat")])
    assert torch.allclose(reward(x, None), expected)
    assert (reward(x) < 0).all()
    assert reward(torch.rand(2, 3, 64, 64)).shape == (2,)  # other sizes are resampled


def test_prompt_category_picks_each_samples_word(model_dir):
    reward = build_reward("emoji_class", model_dir=model_dir, category="prompt")
    x = torch.rand(3, 3, 32, 32)
    prompts = ["cat", "heart", "flag"]
    fixed = [build_reward("emoji_class", model_dir=model_dir, category=w) for w in prompts]
    expected = torch.stack([r(x[i : i + 1])[0] for i, r in enumerate(fixed)])
    assert torch.allclose(reward(x, prompts), expected)
    with pytest.raises(ValueError, match="'dog'"):
        reward(x, ["cat", "dog", "flag"])
    with pytest.raises(ValueError, match="one prompt per sample"):
        reward(x)
    with pytest.raises(ValueError, match="'dog'"):
        build_reward("emoji_class", model_dir=model_dir, category="dog")


def test_random_shift_translates_with_white_fill():
    image = torch.ones(1, 3, 9, 9)
    image[:, :, 4, 4] = 0.0  # one dark pixel in the middle
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        shifted = random_shift(image, 2, gen)
        dark = (shifted[0, 0] == 0).nonzero()
        assert len(dark) == 1 and (dark[0] - 4).abs().max() <= 2
        assert (shifted == 0).sum() == 3 and shifted.max() == 1.0  # the rest stays white
