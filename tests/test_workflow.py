"""The Snakemake layer: the config schema and its checks, the planned DAG, a crash and a rerun of
the main-job command, and the workflow end to end at the image scales with stand-in models."""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from nabla.methods import available_methods
from nabla.protocol import grid_size
from nabla.rewards import REWARDS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_schema_method_enum_is_the_method_registry_as_the_command_writes_it(tmp_path):
    from nabla.methods import registry
    from nabla.workflow_check import write_method_enum

    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["method"]["enum"] == list(registry())  # `nabla schema-methods` was run
    copy = tmp_path / "schema.yaml"
    copy.write_text(SCHEMA.read_text().replace("dpok_kl_return]", "dpok_kl_return, retired]"))
    assert write_method_enum(copy) == list(registry()) and copy.read_text() == SCHEMA.read_text()


def test_the_rule_files_are_snakefmt_clean():
    files = ["Snakefile", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "workflow" / "rules").glob("*.smk"))]
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("scale", ["toy2d", "tiny", "sd15"])
def test_schema_rewards_are_registered(scale):
    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(schema["properties"][scale]["properties"]["rewards"]["items"]["enum"]) <= set(REWARDS)


def test_default_config_validates_and_missing_keys_get_defaults():
    from snakemake.utils import validate

    config = default_config()
    validate(copy.deepcopy(config), str(SCHEMA))
    del config["toy2d"]["evaluation"], config["tiny"]["prior"]["unet_steps"]
    validate(config, str(SCHEMA))
    assert config["toy2d"]["evaluation"] == {"samples": 4000}
    from nabla.models.tiny import TinyPriorConfig

    # schema and dataclass agree: the default prior is the dataclass's, and keeps runs/tiny/prior
    assert config["tiny"]["prior"] == {k: getattr(TinyPriorConfig(), k) for k in config["tiny"]["prior"]}


def dry_run(*args: str, cwd=ROOT, check=True) -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def job_counts(out: str) -> dict[str, str]:
    return dict(line.split() for line in out.split("Job stats:")[1].split("total")[0].splitlines()[3:] if line.strip())


def tiny_runs_at(out: str, rounds: int, trajectories: int) -> bool:
    """Whether a dry run's output has tiny training commands, and every one trains this budget."""
    flags = f"--rounds {rounds} --trajectories {trajectories}"
    tiny = [line for line in out.splitlines() if "nabla runs --scale tiny" in line]
    return bool(tiny) and all(flags in line for line in tiny)


def test_every_schema_violation_is_named_at_once(tmp_path):
    config = default_config()
    config["toy2d"].update(methods=["residual_nabla_db", "dpo"], seeds=[])
    config["tiny"]["prior"]["unet_step"] = 10
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    out = dry_run("--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert "the workflow config has problems" in out
    for named in ("toy2d.methods.1: 'dpo' is not one of", "toy2d.seeds:", "tiny.prior: Additional properties"):
        assert named in out, out[-3000:]


@pytest.mark.slow
def test_a_bad_training_config_stops_the_dry_run_naming_every_problem(tmp_path):
    copy_workflow(tmp_path)
    train = yaml.safe_load((ROOT / "config/train/toy2d.yaml").read_text())
    train.update(lr=-1.0, trajectories_per_round=0, lrr=3)
    (tmp_path / "config/train/toy2d.yaml").write_text(yaml.safe_dump(train))
    out = dry_run(cwd=tmp_path, check=False)
    assert "the runs' training configs have problems" in out
    for named in ("config/train/toy2d.yaml: lr = -1.0: must be non-negative",
                  "config/train/toy2d.yaml: trajectories_per_round = 0: must be positive",
                  "config/train/toy2d.yaml: unknown key 'lrr'"):
        assert named in out, out[-3000:]


@pytest.mark.slow
def test_the_default_plan_runs_both_protocols_at_toy2d_and_the_release_one_at_tiny():
    out = dry_run("--forceall", "--profile", "profiles/local")
    jobs = job_counts(out)
    # toy2d: 11 methods x 2 rewards, one job each for the release and the tuned protocol (3 seeds)
    # and for the tuning grid (4 points); tiny: 7 methods x 2 rewards x 3 seeds, a job a run; a prior
    # row per reward; the prior's quality table needs the learned reward's classifier
    assert jobs["runs"] == str(22 + 22 + 42) and jobs["tune_runs"] == "22" and jobs["evaluate_prior"] == "4"
    assert jobs["prior_quality"] == "1" and jobs["train_tiny_reward"] == "1"
    assert jobs["select_settings"] == "1" and jobs["aggregate"] == "4" and jobs["publish"] == "2"
    assert jobs["toy2d_exactness"] == "1"
    budget = default_config()["tiny"]["budget"]
    assert tiny_runs_at(out, budget["rounds"], budget["trajectories_per_round"])
    toy = [line for line in out.splitlines() if "nabla runs --scale toy2d" in line]
    assert toy and not any("--rounds" in line for line in toy)
    assert all("--seeds 0 1 2" in line for line in toy if "--protocol release" in line)


#: Snakemake as it runs under --use-conda: its own process cannot import the package
WITHOUT_THE_PACKAGE = "import sys; sys.modules['nabla.workflow_check'] = None; from snakemake.cli import main; main()"


@pytest.mark.slow
def test_where_the_package_does_not_import_a_first_job_checks_the_config_and_every_job_waits_for_it(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_THE_PACKAGE, "-n", "--forceall", "--cores", "2"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert job_counts(out)["check_config"] == "1"
    for rule in ("runs", "tune_runs", "pretrain_toy2d_prior", "pretrain_tiny_prior", "evaluate_prior"):
        block = out.split(f"rule {rule}:")[1].split("rule ")[0]
        assert "runs/checked/config.ok" in block.split("output:")[0], rule
    # and that job names what is wrong
    copy_workflow(tmp_path)
    train = yaml.safe_load((ROOT / "config/train/toy2d.yaml").read_text())
    train["lr"] = -1.0
    (tmp_path / "config/train/toy2d.yaml").write_text(yaml.safe_dump(train))
    failed = subprocess.run([sys.executable, "-c", WITHOUT_THE_PACKAGE, "--cores", "1", "runs/checked/config.ok"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "lr = -1.0: must be non-negative" in (tmp_path / "logs/check_config.log").read_text()


@pytest.mark.slow
def test_slurm_profile_dry_run_shows_each_jobs_resources():
    out = dry_run("--forceall", "--profile", "profiles/slurm")
    runs = out.split("rule runs:")[1].split("Shell command")[0]
    assert "slurm_partition=gpu" in runs and "runtime=720" in runs and "gpu=0" in runs


@pytest.mark.slow
def test_sd15_slurm_dry_run_asks_a_gpu_per_training_job_and_checks_models_first():
    out = dry_run("--forceall", "--profile", "profiles/slurm", "--configfile", "config/sd15.yaml")
    # 3 rewards x 7 methods x 3 seeds, one job a run; the prior's row per reward
    assert job_counts(out) == {"check_sd15_models": "1", "runs": "63", "evaluate_prior": "3",
                               "aggregate": "1", "figures_of_a_reward": "3", "claims": "1", "publish": "1",
                               "readme": "1", "all": "1"}
    runs = out.split("rule runs:")[1].split("rule ")[0]
    assert "gpu=1" in runs and "runtime=720" in runs and "--features dreamsim --fid-features inception" in runs


def test_sd15_config_validates_and_runs_only_the_sd15_scale():
    from snakemake.utils import validate

    config = default_config()
    config.update(yaml.safe_load((ROOT / "config" / "sd15.yaml").read_text()))  # as --configfile merges
    validate(config, str(SCHEMA))
    assert config["scales"] == ["sd15"] and config["sd15"]["rewards"] == ["aesthetic", "hpsv2", "imagereward"]
    train = yaml.safe_load((ROOT / config["sd15"]["train_config"]).read_text())
    assert train["sampler"] == {"num_steps": 50, "eta": 1.0, "guidance_scale": 5.0} and train["lora_rank"] == 8
    assert set(train["methods"]) == set(available_methods())


@pytest.mark.slow
def test_full_config_plans_every_method_on_two_rewards_at_tiny():
    out = dry_run("--forceall", "--configfile", "config/full.yaml", "--printshellcmds")
    jobs = job_counts(out)
    # tiny: 7 methods x 2 rewards x 3 seeds, one job a run; toy2d as the default
    assert jobs["runs"] == str(42 + 44) and jobs["evaluate_prior"] == "4" and jobs["figures_of_a_reward"] == "6"
    tiny = yaml.safe_load((ROOT / "config" / "train" / "tiny.yaml").read_text())
    assert tiny_runs_at(out, tiny["rounds"], tiny["trajectories_per_round"])
    # its own result set: the default's tiny runs and results/tiny are not its to overwrite
    tiny_commands = [line for line in out.splitlines() if "nabla runs --scale tiny" in line]
    assert all("--root runs/tiny-full/release/" in line for line in tiny_commands)
    assert "--to results/tiny-full " in out and "--to results/tiny " not in out


@pytest.mark.slow
def test_a_result_set_with_its_own_prior_pretrains_it_apart_and_trains_on_it():
    out = dry_run("--forceall", "--configfile", "config/tiny-beta.yaml", "config/tiny-attn4-beta.yaml",
                  "--printshellcmds")
    folder = "runs/tiny/prior-unet_attention_heads2-unet_attention_levels1"
    pretrain = [line for line in out.splitlines() if "nabla pretrain --scale tiny" in line]
    assert len(pretrain) == 1 and f"--out {folder} " in pretrain[0], pretrain
    assert '"unet_attention_heads": 2, "unet_attention_levels": 1' in pretrain[0]
    runs = [line for line in out.splitlines() if "nabla runs --scale tiny" in line]
    assert len(runs) == 24 and all(f"--model {folder} " in line for line in runs)
    assert all("--root runs/tiny-attn4-beta/tune/" in line for line in runs)
    # its comparison: the default's 42 runs on the same prior, at the β selected for it
    out = dry_run("--forceall", "--configfile", "config/tiny-attn4.yaml", "--printshellcmds")
    assert f"nabla pretrain --scale tiny --out {folder} " in out
    runs = [line for line in out.splitlines() if "nabla runs --scale tiny" in line]
    assert len(runs) == 42 and all(f"--config config/train/tiny-attn4.yaml --model {folder} " in line for line in runs)
    # the default prior keeps its folder, which no other prior's result set touches
    default = dry_run("--forceall", "--configfile", "config/tiny-beta.yaml", "--printshellcmds")
    assert "--out runs/tiny/prior " in default and "runs/tiny/prior-" not in default


@pytest.mark.slow
def test_tiny_tuned_config_tunes_every_method_alike_at_the_default_budget():
    tuned = yaml.safe_load((ROOT / "config" / "tiny-tuned.yaml").read_text())
    grids = tuned["tiny"]["tune"]["grids"]
    assert set(grids) == set(default_config()["tiny"]["methods"])
    assert all(grid_size(grid) == 4 for grid in grids.values())
    # each method's own strength knob: the GFlowNets' β, the others' step (and ReFL's reward weight)
    knobs = {m: set(grid) for m, grid in grids.items()}
    assert all(knobs[m] == {"reward_scale"} for m in ("residual_nabla_db", "nabla_db", "db_gflownet"))
    assert all(knobs[m] == {"lr"} for m in ("ddpo", "draft", "draft_lv"))
    assert knobs["refl"] == {"lr", "reward_loss_weight"}
    out = dry_run("--forceall", "--configfile", "config/tiny-tuned.yaml", "--printshellcmds")
    jobs = job_counts(out)
    # 7 methods x 2 rewards x 4 grid points, then x 3 seeds at the selected settings; no toy2d
    assert jobs["tune_runs"] == "56" and jobs["runs"] == "42" and jobs["select_settings"] == "1"
    budget = default_config()["tiny"]["budget"]
    assert tiny_runs_at(out, budget["rounds"], budget["trajectories_per_round"])
    assert "--scale toy2d" not in out


# -- running the workflow -------------------------------------------------------------------------
def copy_workflow(folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "environment.yml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)


def snakemake(folder: Path, *args: str, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=folder, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_a_scale_needs_its_section_only_where_scales_lists_it():
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    toy = {"toy2d": default_config()["toy2d"]}
    jsonschema.validate({"scales": ["toy2d"], **toy}, schema)
    for config in ({"scales": ["toy2d", "tiny"], **toy}, toy):  # tiny listed, or by the default scales
        with pytest.raises(jsonschema.ValidationError, match="'tiny' is a required property"):
            jsonschema.validate(config, schema)


def test_a_result_set_is_named_after_its_scale():
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    toy = default_config()["toy2d"]
    jsonschema.validate({"scales": ["toy2d"], "toy2d": {**toy, "name": "toy2d-long-run"}}, schema)
    for name in ("tiny-long-run", "toy2d-", "toy2d_x", "results"):
        with pytest.raises(jsonschema.ValidationError, match="does not match"):
            jsonschema.validate({"scales": ["toy2d"], "toy2d": {**toy, "name": name}}, schema)


@pytest.mark.slow
def test_the_dot_test_config_runs_the_whole_workflow_in_its_own_folder(tmp_path):
    """The catalog's convention: `snakemake --cores 2 --directory .test` (here a copy of .test/)."""
    import shutil

    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    result = snakemake(ROOT, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = pd.read_csv(tmp_path / "results/toy2d/release/summary.csv")
    assert set(summary["method"]) == {"pretrained", "residual_nabla_db", "ddpo", "rtb"}
    assert (tmp_path / "results/toy2d/exactness.md").exists() and not (tmp_path / "results/tiny").exists()
    # everything under its own folder; its 300-step prior apart from the default's runs/toy2d/prior
    assert (tmp_path / "runs/toy2d/prior-steps300/config.json").exists()


def toy_workflow(folder: Path, rounds: int, checkpoint_every: int, methods=("residual_nabla_db",),
                 protocols=("release",)) -> None:
    """One toy2d run a method (residual ∇-DB; linear, seed 0) a protocol: a workflow a crash test can
    kill in seconds."""
    copy_workflow(folder)
    train = yaml.safe_load((ROOT / "config/train/toy2d.yaml").read_text())
    train.update(rounds=rounds, checkpoint_every=checkpoint_every, eval_every=10, eval_samples_per_prompt=64,
                 trajectories_per_round=64)
    (folder / "config/train/toy2d.yaml").write_text(yaml.safe_dump(train))
    config = default_config()
    config["toy2d"].update(methods=list(methods), rewards=["linear"], seeds=[0], protocols=list(protocols),
                           prior={"seed": 0, "steps": 200}, evaluation={"samples": 500})
    config["scales"] = ["toy2d"]
    (folder / "config/config.yaml").write_text(yaml.safe_dump(config))


RUN = Path("runs/toy2d/release/linear/residual_nabla_db/seed0")


@pytest.mark.slow
def test_a_crash_then_the_main_job_command_again_finishes_the_run_as_if_uninterrupted(tmp_path):
    """SIGKILL the training process after its first checkpoint; the same command again resumes
    it, runs every update once, ends at the uninterrupted run's weights, and publishes its
    metrics. A stale results/ (committed copies) never passes for the result."""
    crashed, whole = tmp_path / "crashed", tmp_path / "whole"
    for folder in (crashed, whole):
        toy_workflow(folder, rounds=120, checkpoint_every=20)
    (crashed / "results/toy2d/release").mkdir(parents=True)
    (crashed / "results/toy2d/release/summary.csv").write_text("a committed result of another run\n")

    job = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=crashed,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = crashed / RUN / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    assert state.exists(), "the run never wrote its first checkpoint"
    # this workflow's training process only: another test's run of the same relative paths may be
    # running beside it (pytest-xdist), so match the working directory too
    trainer = [pid for pid in subprocess.run(["pgrep", "-f", f"nabla runs .*--root {RUN.parent}"],
                                             capture_output=True, text=True).stdout.split()
               if Path(f"/proc/{pid}/cwd").resolve() == crashed.resolve()]
    assert trainer, "no training process to kill"
    for pid in trainer:
        os.kill(int(pid), signal.SIGKILL)
    output = job.communicate(timeout=300)[0]
    assert job.returncode != 0, output[-2000:]
    killed_at = json.loads(state.read_text())["round"]
    assert 20 <= killed_at < 120 and not (crashed / RUN / "done.json").exists()
    assert (crashed / "results/toy2d/release/summary.csv").read_text().startswith("a committed")  # not yet published

    again = snakemake(crashed)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "pretrain_toy2d_prior" not in again.stdout + again.stderr  # what finished is not redone
    assert snakemake(whole).returncode == 0
    log = pd.read_csv(crashed / RUN / "train_log.csv")
    assert list(log["step"]) == list(range(1, 241))  # every update once: none missing, none twice
    for name in ("adapter_model.safetensors", "flow.safetensors"):
        a, b = (load_file(str(f / RUN / "final" / name)) for f in (crashed, whole))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    logs = [pd.read_csv(f / RUN / name).drop(columns="seconds") for f in (crashed, whole) for name in ("train_log.csv",)]
    pd.testing.assert_frame_equal(logs[0], logs[1])
    metrics = [json.loads((f / RUN / "metrics.json").read_text())["metrics"] for f in (crashed, whole)]
    assert {k: v for k, v in metrics[0].items() if k != "train_seconds"} == \
        {k: v for k, v in metrics[1].items() if k != "train_seconds"}
    published = pd.read_csv(crashed / "results/toy2d/release/summary.csv")
    run = published[published["method"] == "residual_nabla_db"]
    assert run["energy_distance_target"].item() == pytest.approx(metrics[1]["energy_distance_target"])
    assert len(published) == 2  # the prior's row and the run's: what the DAG computed, not the stale file
    # and the command once more has nothing to do
    assert "Nothing to be done" in snakemake(crashed, "-n").stdout


def planned_jobs(folder: Path) -> list[tuple[str, str]]:
    """A dry run's jobs as (rule, method wildcard or "")."""
    jobs = []
    for line in snakemake(folder, "-n").stdout.splitlines():
        if rule := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append((rule[1], ""))
        elif line.strip().startswith("wildcards:") and (method := re.search(r"method=(\w+)", line)):
            jobs[-1] = (jobs[-1][0], method[1])
    return sorted(jobs)


@pytest.mark.slow
def test_an_edit_to_the_training_config_reruns_exactly_the_jobs_whose_settings_it_changes(tmp_path):
    toy_workflow(tmp_path, rounds=4, checkpoint_every=2, methods=("residual_nabla_db", "ddpo"),
                 protocols=("release", "tune"))
    assert (done := snakemake(tmp_path)).returncode == 0, (done.stdout + done.stderr)[-4000:]
    path = tmp_path / "config/train/toy2d.yaml"
    train = yaml.safe_load(path.read_text())

    path.write_text(path.read_text() + "# a comment changes no setting\n")
    assert "Nothing to be done" in snakemake(tmp_path, "-n").stdout
    # another reward's settings, and a method this workflow does not run
    path.write_text(yaml.safe_dump({**train, "rewards": {**train["rewards"], "quadratic": {"center": [1.0, 1.0]}},
                                    "methods": {**train["methods"], "rtb": {"reward_scale": 9.0}}}))
    assert "Nothing to be done" in snakemake(tmp_path, "-n").stdout
    # one method's release setting: its release runs, and what aggregates them; its tuning runs set
    # that key from their grid (ddpo's lr), so they do not read it
    path.write_text(yaml.safe_dump({**train, "methods": {**train["methods"], "ddpo": {**train["methods"]["ddpo"], "lr": 1.0e-3}}}))
    jobs = planned_jobs(tmp_path)
    assert ("runs", "ddpo") in jobs and ("runs", "residual_nabla_db") not in jobs, jobs
    assert not any(rule in ("evaluate_prior", "toy2d_exactness", "pretrain_toy2d_prior", "tune_runs")
                   for rule, _ in jobs), jobs
    # a setting of the method outside its grid: its tuning runs too
    ddpo = {**train["methods"]["ddpo"], "microbatch_size": 2048}
    path.write_text(yaml.safe_dump({**train, "methods": {**train["methods"], "ddpo": ddpo}}))
    jobs = planned_jobs(tmp_path)
    assert {("runs", "ddpo"), ("tune_runs", "ddpo")} <= set(jobs) and ("tune_runs", "residual_nabla_db") not in jobs
    # a shared setting: every run, and the prior's evaluation
    path.write_text(yaml.safe_dump({**train, "eval_every": 2}))
    jobs = planned_jobs(tmp_path)
    assert {("runs", "ddpo"), ("runs", "residual_nabla_db"), ("evaluate_prior", ""), ("tune_runs", "ddpo"),
            ("tune_runs", "residual_nabla_db")} <= set(jobs), jobs


@pytest.mark.slow
def test_a_named_result_set_computes_into_its_own_folders_and_leaves_the_defaults_as_they_were(tmp_path):
    toy_workflow(tmp_path, rounds=4, checkpoint_every=2)
    assert (done := snakemake(tmp_path)).returncode == 0, (done.stdout + done.stderr)[-4000:]
    default = {p: p.read_bytes() for p in sorted(tmp_path.glob("r*/**/*")) if p.is_file()}
    # other runs (a longer budget) under another name: trained and published apart
    (tmp_path / "longer.yaml").write_text(yaml.safe_dump({"toy2d": {"name": "toy2d-longer", "budget": {"rounds": 6}}}))
    named = ("--configfile", "longer.yaml")
    assert (done := snakemake(tmp_path, *named)).returncode == 0, (done.stdout + done.stderr)[-4000:]
    for folder in ("runs/toy2d-longer/release/linear/residual_nabla_db/seed0", "runs/records/toy2d-longer/prior",
                   "results/toy2d-longer/release/figures"):
        assert (tmp_path / folder).is_dir(), folder
    summary = pd.read_csv(tmp_path / "results/toy2d-longer/release/summary.csv")
    assert set(summary["method"]) == {"pretrained", "residual_nabla_db"}
    assert (tmp_path / "results/toy2d-longer/exactness.md").exists()
    log = pd.read_csv(tmp_path / "runs/toy2d-longer/release/linear/residual_nabla_db/seed0/train_log.csv")
    assert log["round"].max() == 6  # its budget, not the default's 4 rounds
    # the default's files are byte for byte as they were (but the index of result sets, every set's:
    # it now lists the new one), and its plan has nothing to do
    shared = {tmp_path / "results/README.md"}
    assert {p: p.read_bytes() for p in default if p not in shared} == {p: b for p, b in default.items() if p not in shared}
    assert "[`toy2d-longer`]" in (tmp_path / "results/README.md").read_text()
    assert "Nothing to be done" in snakemake(tmp_path, "-n").stdout
    assert "Nothing to be done" in snakemake(tmp_path, "-n", *named).stdout


@pytest.mark.slow
def test_figures_redraw_from_committed_results_without_any_run(tmp_path):
    toy_workflow(tmp_path, rounds=4, checkpoint_every=2)
    assert snakemake(tmp_path).returncode == 0
    import shutil

    shutil.rmtree(tmp_path / "runs")
    figure = tmp_path / "results/toy2d/release/figures/frontier_linear.png"
    before = figure.stat().st_mtime
    result = snakemake(tmp_path, "--forceall", "figures")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "runs" not in result.stdout and figure.stat().st_mtime > before and not (tmp_path / "runs" / "toy2d").exists()


def image_workflow(folder: Path, random_sd_dir) -> None:
    copy_workflow(folder)
    import shutil

    (folder / "runs" / "tiny").mkdir(parents=True)
    shutil.copytree(random_sd_dir, folder / "runs" / "tiny" / "prior")


@pytest.mark.slow
def test_tiny_comparison_runs_end_to_end_to_its_figures(random_sd_dir, openmoji_cache, tmp_path):
    """Two methods, one seed, two rounds, on a random SD prior standing in for the pretrained one."""
    import shutil

    image_workflow(tmp_path, random_sd_dir)
    (tmp_path / "runs" / "data").mkdir(parents=True)
    shutil.copy(openmoji_cache, tmp_path / "runs" / "data" / "openmoji32.npz")
    (tmp_path / "runs" / "tiny" / "prior" / "pretrain_log.csv").write_text("stage,step,loss,seconds\n")
    for path in (tmp_path / "runs" / "tiny" / "prior").rglob("*"):  # the stand-in prior newer than its input
        os.utime(path)
    old = time.time() - 3600
    os.utime(tmp_path / "runs" / "data" / "openmoji32.npz", (old, old))
    train = yaml.safe_load((ROOT / "config/train/tiny.yaml").read_text())
    train.update(sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0}, prompts=["cat", "heart"],
                 validation_prompts=["red"], eval_prompts=["face"], eval_samples_per_prompt=2, eval_every=1,
                 checkpoint_every=2)
    train["methods"]["residual_nabla_db"].update(microbatch_size=8, flow_channels=[8, 16], transition_fraction=0.5)
    (tmp_path / "config/train/tiny.yaml").write_text(yaml.safe_dump(train))
    config = default_config()
    config["scales"] = ["tiny"]
    config["tiny"].update(methods=["residual_nabla_db", "draft"], seeds=[0], rewards=["colorfulness"],
                          features={"seed": 1, "steps": 20}, reward_model={"seed": 0, "steps": 20},
                          evaluation={"samples": 4}, budget={"rounds": 2, "trajectories_per_round": 4},
                          prior_samples={"seeds": 2, "steps": 3, "eta": 1.0, "guidance": 3.0, "quality_seeds": 4})
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", "mini.yaml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "pretrain_tiny_prior" not in result.stdout + result.stderr  # the stand-in prior was kept
    figures = sorted(p.name for p in (tmp_path / "results/tiny/release/figures").iterdir())
    assert figures == sorted(f"{k}_colorfulness.{e}" for k in ("curves", "frontier", "tradeoff", "samples")
                             for e in ("png", "pdf"))
    summary = pd.read_csv(tmp_path / "results/tiny/release/summary.csv")
    assert set(summary["method"]) == {"pretrained", "residual_nabla_db", "draft"} and "sample_strip" not in summary
    # three validation evaluations (rounds 0, 1, 2): each run's plateau is decided
    assert summary.loc[summary["method"] != "pretrained", "plateaued"].notna().all()
    quality = pd.read_csv(tmp_path / "results/tiny/prior_quality.csv")
    assert len(quality) == 12 and quality["recognised"].between(0, 1).all() and (quality["samples"] == 4).all()
    curves = pd.read_csv(tmp_path / "results/tiny/release/curves.csv")
    assert {"diversity", "fid_to_prior"} <= set(curves) and set(curves["split"]) == {"validation", "evaluation"}
    assert (tmp_path / "results/tiny/prior_samples.png").exists()


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
                 checkpoint_every=2, sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 5.0},
                 prompts=["cat", "dog"], validation_prompts=["red"], eval_prompts=["face", "heart"],
                 eval_samples_per_prompt=2)
    train["methods"]["residual_nabla_db"].update(flow_channels=[8, 16], transition_fraction=0.5)
    train["rewards"]["aesthetic"] = aesthetic_stand_ins
    (tmp_path / "config/train/sd15.yaml").write_text(yaml.safe_dump(train))
    config = yaml.safe_load((ROOT / "config/sd15.yaml").read_text())
    # every registered method (config/sd15.yaml lists the paper's; the exact-target ones are opt-in there)
    config["sd15"].update(methods=available_methods(), rewards=["aesthetic"], seeds=[0], budget={"rounds": 2}, evaluation={
        "samples": 2, "features": f"clip={aesthetic_stand_ins['clip_model']}", "fid_features": f"inception={inception_stand_in}"})
    (tmp_path / "sd15-mini.yaml").write_text(yaml.safe_dump(config))
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    result = snakemake(tmp_path, "--configfile", "sd15-mini.yaml",
                       env={**env_free, "HF_HOME": str(tmp_path / "empty-hf-home"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = pd.read_csv(tmp_path / "results/sd15/release/summary.csv")
    assert set(summary["method"]) == {"pretrained", *available_methods()}
    figures = sorted(p.name for p in (tmp_path / "results/sd15/release/figures").iterdir())
    assert figures == sorted(f"{k}_aesthetic.{e}" for k in ("curves", "frontier", "tradeoff", "samples")
                             for e in ("png", "pdf"))


def test_publishing_replaces_what_was_computed_and_keeps_the_rest(tmp_path):
    from nabla.publish import publish

    source, to = tmp_path / "runs/results/tiny", tmp_path / "results/tiny"
    (source / "release").mkdir(parents=True)
    (source / "release/table.md").write_text("new")
    (source / "prior_samples.png").write_bytes(b"png")
    (to / "release").mkdir(parents=True)
    (to / "release/stale.md").write_text("of an earlier release run")
    (to / "tune").mkdir()
    (to / "tune/selected.md").write_text("an opt-in tuning, not run by this config")
    marker = json.loads(publish(source, to, tmp_path / "runs/published/tiny.json").read_text())
    assert sorted(marker["files"]) == ["prior_samples.png", "release/table.md"]
    assert (to / "release/table.md").read_text() == "new" and not (to / "release/stale.md").exists()
    assert (to / "tune/selected.md").exists() and (to / "prior_samples.png").read_bytes() == b"png"
