"""The Snakemake layer: config schema (defaults, enums that match the registries) and profiles."""

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nabla.methods import available_methods
from nabla.rewards import REWARDS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_schema_method_enum_is_the_method_registry():
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert sorted(schema["$defs"]["method"]["enum"]) == available_methods()


@pytest.mark.parametrize("scale", ["toy2d", "tiny"])
def test_schema_rewards_are_registered(scale):
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert set(schema["properties"][scale]["properties"]["rewards"]["items"]["enum"]) <= set(REWARDS)


def test_default_config_validates_and_missing_keys_get_defaults():
    config = default_config()
    validate(copy.deepcopy(config), SCHEMA)
    del config["toy2d"]["evaluation"], config["tiny"]["prior"]["unet_steps"]
    validate(config, SCHEMA)
    assert config["toy2d"]["evaluation"] == {"beta": 0.5, "samples": 4000}
    from nabla.models.tiny import TinyPriorConfig

    assert config["tiny"]["prior"]["unet_steps"] == TinyPriorConfig().unet_steps  # schema and dataclass agree


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["toy2d"].update(methods=["residual_nabla_db", "dpo"]), "'dpo' is not one of"),
        (lambda c: c["toy2d"].update(seeds=[]), "should be non-empty|is too short"),
        (lambda c: c["tiny"]["prior"].update(unet_step=10), "Additional properties"),
        (lambda c: c["toy2d"]["evaluation"].update(beta=0), "less than or equal to the minimum|exclusiveMinimum"),
    ],
)
def test_bad_config_is_refused_with_the_offending_value(edit, message):
    config = default_config()
    edit(config)
    with pytest.raises(WorkflowError, match=message):
        validate(config, SCHEMA)


def dry_run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--forceall", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.slow
def test_slurm_profile_dry_run_shows_each_jobs_resources():
    out = dry_run("--profile", "profiles/slurm")
    train = out.split("rule train:")[1].split("Shell command")[0]
    assert "slurm_partition=gpu" in train and "runtime=720" in train and "gpu=0" in train


def train_commands(out: str, scale: str) -> list[str]:
    return [line for line in out.splitlines() if "nabla train " in line and f"runs/{scale}/prior " in line]


@pytest.mark.slow
def test_local_profile_dry_run_plans_the_default_workflow_with_its_budget():
    out = dry_run("--profile", "profiles/local")
    assert "pretrain_tiny_prior" in out and "toy2d_tables" in out and "image_figures" in out
    budget = default_config()["tiny"]["budget"]
    flags = f"--updates {budget['updates']} --trajectories {budget['trajectories_per_round']}"
    assert train_commands(out, "tiny") and all(flags in line for line in train_commands(out, "tiny"))
    assert train_commands(out, "toy2d") and not any("--updates" in line for line in train_commands(out, "toy2d"))


@pytest.mark.slow
def test_tiny_comparison_plans_its_reward_and_feature_networks(tmp_path):
    config = default_config()
    config["tiny"].update(methods=["residual_nabla_db", "ddpo"], rewards=["colorfulness", "emoji_class"], seeds=[0])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = dry_run("results/tiny/summary.csv", "--configfile", str(tmp_path / "c.yaml"))  # --configfile takes several
    jobs = dict(line.split() for line in out.split("Job stats:")[1].split("total")[0].splitlines()[3:] if line.strip())
    # 2 methods x 2 rewards x 1 seed, the prior's row per reward, one reward and one feature network
    assert jobs["train"] == "4" and jobs["evaluate"] == "4" and jobs["evaluate_prior"] == "2"
    assert jobs["train_tiny_reward"] == "1" and jobs["train_tiny_features"] == "1" and jobs["image_tables"] == "1"


def test_toy2d_training_curves_measure_against_the_evaluated_target():
    train = yaml.safe_load((ROOT / default_config()["toy2d"]["train_config"]).read_text())
    assert train["eval_target_beta"] == default_config()["toy2d"]["evaluation"]["beta"]


def test_sd15_config_validates_and_runs_only_the_sd15_scale():
    config = default_config()
    config.update(yaml.safe_load((ROOT / "config" / "sd15.yaml").read_text()))  # as --configfile merges
    validate(config, SCHEMA)
    assert config["scales"] == ["sd15"] and config["sd15"]["rewards"] == ["aesthetic", "hpsv2", "imagereward"]
    train = yaml.safe_load((ROOT / config["sd15"]["train_config"]).read_text())
    assert train["sampler"] == {"num_steps": 50, "eta": 1.0, "guidance_scale": 5.0} and train["lora_rank"] == 8
    assert set(train["methods"]) == set(available_methods())


@pytest.mark.slow
def test_sd15_slurm_dry_run_asks_a_gpu_per_training_job_and_checks_models_first():
    out = dry_run("--profile", "profiles/slurm", "--configfile", "config/sd15.yaml")
    jobs = dict(line.split() for line in out.split("Job stats:")[1].split("total")[0].splitlines()[3:] if line.strip())
    # 3 rewards x 7 methods x 3 seeds, the prior's row per reward and seed; one table and one
    # curves job, one figures job per reward
    assert jobs == {"check_sd15_models": "1", "train": "63", "evaluate": "63", "evaluate_prior": "9", "curves": "1",
                    "image_tables": "1", "image_figures": "3", "all": "1"}
    train = out.split("rule train:")[1].split("rule ")[0]
    assert "gpu=1" in train and "runtime=720" in train and "slurm_partition=gpu" in train
    evaluate = out.split("rule evaluate:")[1].split("rule ")[0]
    assert "gpu=1" in evaluate and "--features dreamsim --fid-features inception" in evaluate


IMAGE_FIGURES = " ".join(f"results/{{scale}}/figures/{k}_colorfulness.{e}" for k in
                         ("curves", "tradeoff_diversity", "tradeoff_fid_to_prior", "samples") for e in ("png", "pdf"))


def copy_workflow(folder: Path) -> None:
    import shutil

    for name in ("Snakefile", "workflow", "config", "environment.yml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)


def run_workflow(folder: Path, configfile: str, *targets: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", configfile],
                            cwd=folder, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.mark.slow
def test_tiny_comparison_runs_end_to_end_to_its_figures(random_sd_dir, openmoji_cache, tmp_path):
    """Two methods, one seed, two updates, on a random SD prior standing in for the pretrained one."""
    import shutil

    copy_workflow(tmp_path)
    (tmp_path / "runs" / "data").mkdir(parents=True)
    shutil.copy(openmoji_cache, tmp_path / "runs" / "data" / "openmoji32.npz")  # older than the prior
    shutil.copytree(random_sd_dir, tmp_path / "runs" / "tiny" / "prior")
    (tmp_path / "runs" / "tiny" / "prior" / "pretrain_log.csv").write_text("stage,step,loss,seconds\n")
    for path in (tmp_path / "runs" / "tiny" / "prior").rglob("*"):  # newer than its input
        os.utime(path)
    old = time.time() - 3600
    os.utime(tmp_path / "runs" / "data" / "openmoji32.npz", (old, old))
    train = yaml.safe_load((ROOT / "config/train/tiny.yaml").read_text())
    train.update(updates=2, trajectories_per_round=4, sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0},
                 eval_prompts=["cat", "heart"], eval_samples_per_prompt=2, eval_every=1, checkpoint_every=2)
    train["methods"]["residual_nabla_db"].update(microbatch_size=8, flow_channels=[8, 16], transition_fraction=0.5)
    (tmp_path / "config/train/tiny.yaml").write_text(yaml.safe_dump(train))
    config = default_config()
    config["tiny"].update(methods=["residual_nabla_db", "draft"], seeds=[0], features={"seed": 1, "steps": 20},
                          evaluation={"samples": 4}, budget={"updates": 2, "trajectories_per_round": 4})
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(config))
    result = run_workflow(tmp_path, "mini.yaml", *IMAGE_FIGURES.format(scale="tiny").split())
    assert "pretrain_tiny_prior" not in result.stdout + result.stderr  # the stand-in prior was kept
    figures = sorted(p.name for p in (tmp_path / "results/tiny/figures").iterdir())
    kinds = ("curves", "tradeoff_diversity", "tradeoff_fid_to_prior", "samples")
    assert figures == sorted(f"{k}_colorfulness.{e}" for k in kinds for e in ("png", "pdf"))
    summary = (tmp_path / "results/tiny/summary.csv").read_text()
    assert all(m in summary for m in ("pretrained", "residual_nabla_db", "draft")) and "sample_strip" not in summary


@pytest.mark.slow
def test_full_config_plans_every_method_on_two_rewards_per_scale():
    out = dry_run("--configfile", "config/full.yaml", "--printshellcmds")
    jobs = dict(line.split() for line in out.split("Job stats:")[1].split("total")[0].splitlines()[3:] if line.strip())
    # (toy2d + tiny) x 7 methods x 2 rewards x 3 seeds; the prior's row per (scale, reward, seed)
    assert jobs["train"] == "84" and jobs["evaluate"] == "84" and jobs["evaluate_prior"] == "12"
    assert jobs["image_figures"] == "2" and jobs["toy2d_figures"] == "1"  # tiny: one job per reward
    # full undoes the default's cut: the tiny runs train as config/train/tiny.yaml says
    tiny = yaml.safe_load((ROOT / "config" / "train" / "tiny.yaml").read_text())
    flags = f"--updates {tiny['updates']} --trajectories {tiny['trajectories_per_round']}"
    assert train_commands(out, "tiny") and all(flags in line for line in train_commands(out, "tiny"))


@pytest.mark.slow
def test_sd15_path_runs_every_method_end_to_end_offline(random_sd_dir, aesthetic_stand_ins, inception_stand_in,
                                                      tmp_path):
    """The sd15 workflow (model check, train every method, evaluate with CLIP and Inception features,
    tables, figures) on CPU with stand-ins: a random SD-shaped pipeline, a tiny random CLIP behind the
    aesthetic reward and the diversity features, a TorchScript stand-in for the FID Inception. No network."""
    copy_workflow(tmp_path)
    train = yaml.safe_load((ROOT / "config/train/sd15.yaml").read_text())
    # float32: bf16 is emulated on this CPU (test_sd_backend covers the bf16 path)
    train.update(model=str(random_sd_dir), device="cpu", frozen_dtype="float32", trajectories_per_round=2, eval_every=1,
                 checkpoint_every=2,
                 sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 5.0}, prompts=["cat", "dog"],
                 eval_prompts=["camel", "bat"], eval_samples_per_prompt=2)
    train["methods"]["residual_nabla_db"].update(flow_channels=[8, 16], transition_fraction=0.5)
    train["rewards"]["aesthetic"] = aesthetic_stand_ins
    (tmp_path / "config/train/sd15.yaml").write_text(yaml.safe_dump(train))
    config = yaml.safe_load((ROOT / "config/sd15.yaml").read_text())
    config["sd15"].update(rewards=["aesthetic"], seeds=[0], budget={"updates": 2}, evaluation={
        "samples": 2, "features": f"clip={aesthetic_stand_ins['clip_model']}", "fid_features": f"inception={inception_stand_in}"})
    (tmp_path / "sd15-mini.yaml").write_text(yaml.safe_dump(config))
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "sd15-mini.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**env_free, "HF_HOME": str(tmp_path / "empty-hf-home"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = (tmp_path / "results/sd15/summary.csv").read_text()
    assert all(m in summary for m in ["pretrained", *available_methods()])
    figures = sorted(p.name for p in (tmp_path / "results/sd15/figures").iterdir())
    assert figures == sorted(p.rsplit("/", 1)[1].replace("colorfulness", "aesthetic") for p in IMAGE_FIGURES.split())
