"""Configs: every bad key or value is named at once, run settings resolve in their documented order,
and every run the workflow will start is checked before any job computes."""

import copy
from pathlib import Path

import pytest
import yaml

from nabla.config import TrainConfig, apply_settings, check_run_settings, run_settings, split_seeds
from nabla.options import ConfigError, options_from_dict
from nabla.workflow_check import check_workflow_config, prompt_overlaps

ROOT = Path(__file__).resolve().parents[1]


def test_options_name_every_unknown_key_and_wrong_type_at_once():
    with pytest.raises(ConfigError) as error:
        options_from_dict(TrainConfig, {"lrr": 3, "rnds": 1, "lr": "1e-3", "updates_per_round": 2})
    message = str(error.value)
    for name in ("'lrr'", "'rnds'", "'updates_per_round'", "lr = '1e-3': expected a number"):
        assert name in message, message
    assert len(error.value.problems) == 4


def test_a_train_config_lists_every_out_of_range_value():
    with pytest.raises(ConfigError) as error:
        TrainConfig(lr=-1.0, trajectories_per_round=0, on_nonfinite="ignore")
    assert error.value.problems == [
        "trajectories_per_round = 0: must be positive",
        "lr = -1.0: must be non-negative",
        "on_nonfinite = 'ignore': must be one of fail, stop",
    ]


def test_settings_set_train_keys_at_the_top_and_the_rest_as_method_options():
    raw = apply_settings({"lr": 1.0, "method_options": {"reward_scale": 2.0}}, {"lr": 3.0, "output_reg": 5.0})
    assert raw == {"lr": 3.0, "method_options": {"reward_scale": 2.0, "output_reg": 5.0}}


def test_run_settings_apply_per_reward_then_overrides_then_the_methods_section_then_choices(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({
        "scale": "toy2d", "lr": 1.0, "rounds": 10,
        "methods": {"ddpo": {"lr": 2.0, "clip_range": 0.1}},
        "per_reward": {"linear": {"rounds": 20, "methods": {"ddpo": {"clip_range": 0.2}}}},
        "rewards": {"linear": {"w": [1.0, 0.0]}},
    }))
    raw = run_settings(path, "ddpo", "linear", 3, {"lr": 4.0}, rounds=30)
    assert raw["rounds"] == 30 and raw["lr"] == 4.0 and raw["seed"] == 3
    assert raw["method_options"] == {"clip_range": 0.2} and raw["reward_options"] == {"w": [1.0, 0.0]}
    assert run_settings(path, "ddpo", "linear", 0)["lr"] == 2.0  # the method's release lr over the shared one
    assert run_settings(path, "draft", "linear", 0)["lr"] == 1.0


def test_splits_never_share_noise_seeds_with_each_other_or_with_training():
    from nabla.trainer import round_seeds

    validation, evaluation = set(split_seeds("validation", 4096)), set(split_seeds("evaluation", 4096))
    training = set(round_seeds(0, 0, 128))
    assert not validation & evaluation and not (validation | evaluation) & training


def test_checking_run_settings_names_method_and_reward_problems_without_loading_anything():
    raw = {"scale": "tiny", "method": "ddpo", "reward": "emoji_class", "model": "/nowhere",
           "method_options": {"clip_rang": 0.1}, "reward_options": {"categry": "heart"},
           "prompts": {"dataset": "zhwang/HPDv2", "files": ["benchmark/photo.json"]}}
    problems = check_run_settings(raw)
    assert any("methods.ddpo" in p and "'clip_rang'" in p for p in problems), problems
    assert any("rewards.emoji_class: unknown option 'categry'" in p for p in problems), problems
    assert check_run_settings({**raw, "method_options": {}, "reward_options": {}}) == []


# -- the workflow config --------------------------------------------------------------------------
def workflow_config(**scale_updates) -> dict:
    """The default workflow config with its schema defaults, toy2d only."""
    import jsonschema  # noqa: F401  (the schema validator Snakemake uses)
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    config["scales"] = ["toy2d"]
    config["toy2d"].update(scale_updates)
    return config


def edited_train_config(tmp_path, **edits):
    train = yaml.safe_load((ROOT / "config" / "train" / "toy2d.yaml").read_text())
    for key, value in edits.items():
        train[key] = value
    path = tmp_path / "toy2d.yaml"
    path.write_text(yaml.safe_dump(train))
    return str(path)


def test_the_default_workflow_config_resolves(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = workflow_config()
    config["scales"] = ["toy2d", "tiny"]
    assert check_workflow_config(config) == []


@pytest.mark.parametrize("edits, named", [
    ({"lr": -1.0}, ["lr = -1.0: must be non-negative"]),
    ({"trajectories_per_round": 0}, ["trajectories_per_round = 0: must be positive"]),
    ({"lrr": 3}, ["unknown key 'lrr'"]),
    ({"lr": -1.0, "trajectories_per_round": 0, "lrr": 3},
     ["lr = -1.0", "trajectories_per_round = 0", "unknown key 'lrr'"]),
    ({"methods": {"ddpo": {"clip_rnge": 0.1}}}, ["methods.ddpo: unknown key 'clip_rnge'"]),
    # a method option's typo is named beside the TrainConfig's own problems
    ({"lr": -1.0, "methods": {"ddpo": {"clip_rnge": 0.1}}}, ["lr = -1.0", "methods.ddpo: unknown key 'clip_rnge'"]),
])
def test_a_bad_training_config_is_named_with_its_file_and_every_bad_key(tmp_path, monkeypatch, edits, named):
    monkeypatch.chdir(ROOT)
    path = edited_train_config(tmp_path, **edits)
    problems = check_workflow_config(workflow_config(train_config=path))
    text = "\n".join(problems)
    assert all(path in p for p in problems) and all(n in text for n in named), text
    # once each, however many runs share it
    assert all(sum(n in p for p in problems) == 1 for n in named), text


def test_a_prior_the_workflow_cannot_build_is_named_before_any_job(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = workflow_config()
    config["scales"] = ["toy2d", "tiny"]
    config["tiny"]["prior"].update(unet_attention_levels=4, unet_attention_heads=3)
    config["toy2d"]["prior"]["step"] = 10
    problems = "\n".join(check_workflow_config(config))
    for named in ("tiny.prior: unet_attention_levels = 4: must be in [0, 3]",
                  "tiny.prior: unet_attention_heads = 3: must divide the attention blocks' widths [16, 32, 64]",
                  "toy2d.prior: unknown key 'step'"):
        assert named in problems, problems


def test_tuning_grids_must_give_every_method_the_same_number_of_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = workflow_config()
    config["toy2d"]["tune"]["grids"]["ddpo"] = {"lr": [1e-3, 2e-3]}
    config["toy2d"]["tune"]["grids"]["draft"] = {"lr": [1e-3, -1.0, 2e-3, 4e-3]}
    del config["toy2d"]["tune"]["grids"]["refl"]
    problems = "\n".join(check_workflow_config(config))
    assert "grids.ddpo has 2 points, runs_per_method is 4" in problems
    assert "grids.draft point 1 {'lr': -1.0}" in problems and "lr = -1.0" in problems
    assert "no grid for refl" in problems


def test_the_tuned_protocol_needs_a_tune_section(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = workflow_config()
    del config["toy2d"]["tune"]
    assert any("tune is missing" in p for p in check_workflow_config(config))


def config_prompt_splits():
    """(config file, reward, raw settings) of every training config and reward in the repository."""
    for path in sorted((ROOT / "config" / "train").glob("*.yaml")):
        train = yaml.safe_load(path.read_text())
        for reward in train.get("rewards") or {}:
            yield pytest.param(path, reward, id=f"{path.stem}-{reward}")


@pytest.mark.parametrize("path, reward", list(config_prompt_splits()))
def test_the_three_prompt_splits_are_disjoint_in_every_config(path, reward):
    raw = run_settings(path, "residual_nabla_db", reward, 0)
    assert prompt_overlaps(raw) == []
    if raw["scale"] == "toy2d":  # one unconditional prompt: the seeds keep the splits apart
        assert raw["prompts"] == raw["validation_prompts"] == raw["eval_prompts"] == [""]
    elif all(isinstance(raw[k], list) for k in ("prompts", "validation_prompts", "eval_prompts")):
        assert len(raw["validation_prompts"]) >= 3


def test_overlapping_splits_are_found_in_lists_and_in_slices_of_the_same_files():
    lists = {"scale": "tiny", "prompts": ["cat", "heart"], "validation_prompts": ["heart"], "eval_prompts": ["moon"]}
    assert prompt_overlaps(lists) == ["prompts and validation_prompts share prompts: 'heart'"]
    spec = {"dataset": "zhwang/HPDv2", "files": ["benchmark/photo.json"]}
    slices = {"scale": "sd15", "prompts": {**spec, "start": 20}, "validation_prompts": {**spec, "start": 10, "stop": 21},
              "eval_prompts": {**spec, "stop": 10}}
    assert prompt_overlaps(slices) == ["prompts and validation_prompts take overlapping entries [20:None] and [10:21] "
                                       "of the same files"]
    slices["validation_prompts"]["stop"] = 20
    assert prompt_overlaps(copy.deepcopy(slices)) == []
