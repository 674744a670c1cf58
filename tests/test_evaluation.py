"""Measuring runs: toy2d against the exact targets each method actually has, the image scales'
diversity and FID-to-prior, and the prior from a training config alone."""

import json

import pytest
import torch
import yaml

from nabla.cli import main
from nabla.config import TrainConfig
from nabla.data.toy2d import circle_mixture, reward_only_target, QuadraticReward, tilt_linear
from nabla.evaluation import own_target
from nabla.metrics.toy2d import ReferenceSample, energy_distance, mixture_energy_distance
from nabla.report.grids import from_png_base64
from nabla.rewards import build_reward
from nabla.trainer import Trainer

TOY = dict(scale="toy2d", rounds=2, trajectories_per_round=16, sampler={"num_steps": 20, "eta": 1.0, "guidance_scale": 1.0},
           prompts=[""], validation_prompts=[""], eval_prompts=[""], eval_samples_per_prompt=8, eval_every=0,
           checkpoint_every=2, eval_target_beta=0.5)


@pytest.fixture(scope="module")
def toy_run(toy_prior_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_run")
    cfg = TrainConfig(model=str(toy_prior_dir), method="residual_nabla_db", reward="linear",
                      method_options={"reward_scale": 0.5, "weighting": "sigma2"}, **TOY)
    Trainer(cfg, out, progress=False).run()
    return out


def test_a_run_is_measured_against_the_tilted_target_and_its_own(toy_run, tmp_path):
    main(["evaluate", "--run", str(toy_run), "--out", str(tmp_path / "m.json"), "--samples", "2000"])
    metrics = json.loads((tmp_path / "m.json").read_text())
    exact = mixture_energy_distance(circle_mixture(), tilt_linear(circle_mixture(), (1.0, 0.0), 0.5))
    assert metrics["method"] == "residual_nabla_db" and metrics["rounds"] == 2 and metrics["beta"] == 0.5
    assert abs(metrics["energy_distance_target"] - exact) < 0.3  # two rounds barely move the prior
    assert metrics["energy_distance_own_target"] == metrics["energy_distance_target"]  # its target is the tilt
    assert metrics["energy_distance_prior"] < 0.15
    assert abs(sum(metrics["masses"]) - 1) < 1e-6 and metrics["target_masses"][1] == pytest.approx(0.366, abs=1e-3)


def test_the_prior_is_evaluated_from_the_training_config_alone(toy_prior_dir, tmp_path):
    config = tmp_path / "toy.yaml"
    # a method's section that set a shared key would reach its runs, never the prior's row
    methods = {"residual_nabla_db": {"eval_target_beta": 2.0}}
    config.write_text(yaml.safe_dump({**TOY, "model": str(toy_prior_dir), "methods": methods}))
    main(["evaluate-prior", "--config", str(config), "--reward", "linear", "--out", str(tmp_path / "p.json"),
          "--samples", "2000"])
    prior = json.loads((tmp_path / "p.json").read_text())
    assert prior["method"] == "pretrained" and prior["energy_distance_own_target"] is None  # no method, no own target
    assert prior["beta"] == TOY["eval_target_beta"]
    exact = mixture_energy_distance(circle_mixture(), tilt_linear(circle_mixture(), (1.0, 0.0), 0.5))
    assert abs(prior["energy_distance_target"] - exact) < 0.3


def test_each_method_family_has_its_own_target():
    from nabla.methods import method_class
    from nabla.options import options_from_dict

    prior, reward = circle_mixture(), build_reward("quadratic", center=[0.0, 2.0])
    opts = lambda m, **o: options_from_dict(method_class(m).Options, o)  # noqa: E731
    tilted = own_target(reward, prior, "residual_nabla_db", opts("residual_nabla_db", reward_scale=0.5), (2,))
    assert mixture_energy_distance(tilted, reward.exact_target(prior, 0.5)) == pytest.approx(0, abs=1e-9)
    # DB-GFlowNet's log-probs are means over the 2 dimensions: its β = 0.25 is exp(0.5 r)
    for method, beta in (("nabla_db", 0.5), ("db_gflownet", 0.25)):
        target = own_target(reward, prior, method, opts(method, reward_scale=beta), (2,))
        expected = reward_only_target(QuadraticReward([0.0, 2.0]), 0.5)
        assert torch.allclose(target.means, expected.means) and torch.allclose(target.stds, expected.stds)
    assert own_target(build_reward("linear"), prior, "nabla_db", opts("nabla_db"), (2,)) is None  # not normalisable
    assert own_target(reward, prior, "ddpo", opts("ddpo"), (2,)) is None  # a reward maximiser


def test_a_reference_sample_gives_the_energy_distance_of_every_set_measured_against_it():
    g = torch.Generator().manual_seed(0)
    x, y, z = torch.randn(300, 2, generator=g), torch.randn(500, 2, generator=g) + 1.0, torch.randn(400, 2, generator=g)
    reference = ReferenceSample(y)
    assert reference.energy_distances(x, ReferenceSample(z)) == pytest.approx([energy_distance(x, y), energy_distance(x, z)])


@pytest.mark.slow
def test_tiny_evaluation_reports_diversity_and_fid_to_the_prior(random_sd_dir, openmoji_cache, tmp_path):
    from nabla.metrics.features import train_feature_network

    features = train_feature_network(openmoji_cache, tmp_path / "features", steps=20)
    spec = f"emoji={features}"
    cfg = TrainConfig(
        scale="tiny", model=str(random_sd_dir), method="draft", reward="colorfulness", rounds=2, lr=0.5,
        trajectories_per_round=2, sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0},
        prompts=["cat"], validation_prompts=["red"], eval_prompts=["cat", "heart"], eval_samples_per_prompt=2,
        eval_every=1, eval_features=spec, checkpoint_every=2, lora_rank=2,
    )
    Trainer(cfg, tmp_path / "run", progress=False).run()
    dense = __import__("pandas").read_csv(tmp_path / "run" / "eval_log.csv")
    # dense evaluation: the prior itself at round 0 (FID 0 to itself), both splits every round
    assert list(dense["split"]) == ["validation", "evaluation"] * 3
    assert dense.loc[dense["round"] == 0, "fid_to_prior"].abs().max() < 1e-6
    assert (dense.loc[dense["round"] == 2, "fid_to_prior"] > 1e-4).all()
    main(["evaluate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m.json"), "--features", spec, "--samples", "4"])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"scale": "tiny", "model": str(random_sd_dir), "prompts": ["cat"],
                                      "validation_prompts": ["red"], "eval_prompts": ["cat", "heart"],
                                      "sampler": {"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0}}))
    main(["evaluate-prior", "--config", str(config), "--reward", "colorfulness", "--out", str(tmp_path / "p.json"),
          "--features", spec, "--samples", "4"])
    tuned, prior = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "p.json"))
    assert tuned["num_samples"] == 8 and tuned["method"] == "draft" and prior["method"] == "pretrained"
    # the sample grid's strip: the first 4 seeds of each prompt, as a PNG in the JSON
    assert tuned["sample_strip_prompts"] == ["cat"] * 4 + ["heart"] * 4
    assert from_png_base64(tuned["sample_strip"], 8).shape == (8, 3, 32, 32)
    # the prior against itself (the same noise) is at 0 up to float error; the LoRA moved far more
    assert abs(prior["fid_to_prior"]) < 1e-6, prior
    assert tuned["fid_to_prior"] > 1e-4 and tuned["fid_to_prior_pooled"] > 1e-4, tuned
    with pytest.raises(ValueError, match="tiny evaluation needs feature extractors: tiny emoji=DIR"):
        main(["evaluate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "x.json")])
