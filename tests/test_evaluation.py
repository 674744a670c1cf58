"""Evaluating toy2d runs against the exact target, and aggregating seeds into tables."""

import json

import pytest

from nabla.cli import main
from nabla.data.toy2d import circle_mixture, tilt_linear
from nabla.metrics.toy2d import mixture_energy_distance
from nabla.report.grids import from_png_base64
from nabla.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def toy_run(toy_prior_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_run")
    cfg = TrainConfig(
        scale="toy2d", model=str(toy_prior_dir), method="residual_nabla_db", reward="linear", updates=2,
        trajectories_per_round=16, sampler={"num_steps": 20, "eta": 1.0, "guidance_scale": 1.0},
        prompts=[""], eval_prompts=[""], eval_samples_per_prompt=8, eval_every=0, checkpoint_every=2,
        method_options={"reward_scale": 0.5, "weighting": "sigma2"},
    )
    Trainer(cfg, out, progress=False).run()
    return out


def test_prior_is_as_far_from_the_target_as_the_exact_mixtures_are(toy_run, tmp_path):
    main(["evaluate", "--prior", "--run", str(toy_run), "--out", str(tmp_path / "prior.json"),
          "--beta", "0.5", "--samples", "2000"])
    metrics = json.loads((tmp_path / "prior.json").read_text())
    exact = mixture_energy_distance(circle_mixture(), tilt_linear(circle_mixture(), (1.0, 0.0), 0.5))
    assert metrics["method"] == "pretrained"
    assert abs(metrics["energy_distance_target"] - exact) < 0.3
    assert metrics["energy_distance_prior"] < 0.15
    assert abs(sum(metrics["masses"]) - 1) < 1e-6
    assert metrics["target_masses"][1] == pytest.approx(0.366, abs=1e-3)


def test_unfinished_run_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("scale: toy2d\n")
    with pytest.raises(FileNotFoundError, match="not finished"):
        main(["evaluate", "--run", str(tmp_path), "--out", str(tmp_path / "m.json"), "--beta", "0.5"])


def test_aggregate_writes_summary_and_mean_std_tables(toy_run, tmp_path):
    files = []
    for seed, ed in ((0, 0.1), (1, 0.3)):
        path = tmp_path / f"m{seed}.json"
        path.write_text(json.dumps({"scale": "toy2d", "reward": "linear", "method": "residual_nabla_db",
                                    "seed": seed, "energy_distance_target": ed, "masses": [0.5, 0.5]}))
        files.append(str(path))
    main(["aggregate", "--metrics", *files, "--summary", str(tmp_path / "summary.csv"),
          "--table", str(tmp_path / "table"), "--columns", "energy_distance_target", "--title", "toy"])
    table = (tmp_path / "table.md").read_text()
    assert "toy: mean ± std over 2 seeds" in table
    assert "0.200 ± 0.100" in table  # mean 0.2, population std 0.1
    assert "0.200 $\\pm$ 0.100" in (tmp_path / "table.tex").read_text()
    assert len((tmp_path / "summary.csv").read_text().splitlines()) == 3


def test_vector_metrics_are_averaged_per_entry_beside_the_exact_reference():
    import pandas as pd

    from nabla.report.tables import mean_vector_table

    frame = pd.DataFrame({
        "reward": ["linear"] * 2, "method": ["ddpo"] * 2, "seed": [0, 1],
        "masses": ["[0.2, 0.8]", "[0.4, 0.6]"], "target_masses": ["[0.5, 0.5]"] * 2,
    })
    table = mean_vector_table(frame, "masses", reference="target_masses")
    assert table["method"].tolist() == ["exact target", "ddpo"]
    assert table["masses[0]"].tolist() == [0.5, 0.3] and table["masses[1]"].tolist() == [0.5, 0.7]


@pytest.mark.slow
def test_tiny_evaluation_reports_diversity_and_fid_to_the_prior(random_sd_dir, openmoji_cache, tmp_path):
    from nabla.metrics.features import train_feature_network

    features = train_feature_network(openmoji_cache, tmp_path / "features", steps=20)
    cfg = TrainConfig(
        scale="tiny", model=str(random_sd_dir), method="draft", reward="colorfulness", updates=2, lr=0.5,
        trajectories_per_round=2, sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0},
        prompts=["cat"], eval_prompts=["cat", "heart"], eval_samples_per_prompt=2, eval_every=0,
        checkpoint_every=2, lora_rank=2,
    )
    Trainer(cfg, tmp_path / "run", progress=False).run()
    main(["evaluate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m.json"), "--features", f"emoji={features}", "--samples", "4"])
    main(["evaluate", "--prior", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "p.json"), "--features", f"emoji={features}", "--samples", "4"])
    tuned, prior = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "p.json"))
    assert tuned["num_samples"] == 8 and tuned["method"] == "draft" and prior["method"] == "pretrained"
    # the sample grid's strip: the first 4 seeds of each prompt, as a PNG in the JSON
    assert tuned["sample_strip_prompts"] == ["cat"] * 4 + ["heart"] * 4
    assert from_png_base64(tuned["sample_strip"], 8).shape == (8, 3, 32, 32)
    # same noise with the adapter off gives the prior's images again (0 up to float error); the
    # LoRA moved the images by orders of magnitude more
    assert abs(prior["fid_to_prior"]) < 1e-6, prior
    assert tuned["fid_to_prior"] > 1e-4 and tuned["fid_to_prior_pooled"] > 1e-4, tuned
    assert prior["diversity"] == pytest.approx(prior["prior_diversity"]) == pytest.approx(tuned["prior_diversity"])
    with pytest.raises(ValueError, match="tiny evaluation needs feature extractors: tiny emoji=DIR"):
        main(["evaluate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "x.json")])
