"""Prompt sets from dataset files, and the per-reward part of a training config."""

from __future__ import annotations

import json

import pytest
import yaml

from nabla.data.prompt_sets import PromptSet, read_prompt_file
from nabla.hub import MissingModelsError
from nabla.trainer import config_models, load_train_config


@pytest.fixture()
def dataset(tmp_path):
    folder = tmp_path / "hpd"
    (folder / "benchmark").mkdir(parents=True)
    (folder / "benchmark/photo.json").write_text(json.dumps([f"photo {i}" for i in range(5)]))
    (folder / "benchmark/paintings.txt").write_text("painting 0\n\n painting 1 \npainting 2\n")
    return folder


def test_prompt_files_are_json_lists_or_lines(dataset, tmp_path):
    assert read_prompt_file(dataset / "benchmark/paintings.txt") == ["painting 0", "painting 1", "painting 2"]
    (tmp_path / "bad.json").write_text(json.dumps({"prompts": ["a"]}))
    with pytest.raises(ValueError, match="not a JSON list of prompt strings"):
        read_prompt_file(tmp_path / "bad.json")


def test_a_prompt_set_slices_each_file_then_concatenates(dataset):
    files = ("benchmark/photo.json", "benchmark/paintings.txt")
    assert PromptSet(str(dataset), files, start=3).load() == ("photo 3", "photo 4")
    assert PromptSet(str(dataset), files, stop=1).load() == ("photo 0", "painting 0")
    with pytest.raises(ValueError, match="holds no prompts"):
        PromptSet(str(dataset), files, start=9).load()
    with pytest.raises(ValueError, match=r"a prompt set is \{dataset"):
        PromptSet.from_config({"dataset": str(dataset), "file": "benchmark/photo.json"})


def test_a_missing_prompt_file_is_named_with_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingModelsError, match=r"datasets/nabla-test/absent/p\.json \(prompt set\)"):
        PromptSet("nabla-test/absent", ("p.json",)).load()


def test_per_reward_settings_apply_to_that_reward_only(dataset, tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({
        "scale": "toy2d", "prompts": ["x"], "eval_prompts": ["y"],
        "methods": {"nabla_db": {"output_reg": 5.0, "reward_scale": 3.0}},
        "rewards": {"linear": {"w": [1.0, 0.0]}, "quadratic": {}},
        "per_reward": {"linear": {
            "prompts": {"dataset": str(dataset), "files": ["benchmark/photo.json"], "start": 3},
            "eval_samples_per_prompt": 3,
            "methods": {"nabla_db": {"output_reg": 7.0}},
        }},
    }))
    linear = load_train_config(path, "nabla_db", "linear", 0)
    assert linear.prompts == ("photo 3", "photo 4") and linear.eval_prompts == ("y",)
    assert linear.eval_samples_per_prompt == 3
    assert linear.method_options == {"output_reg": 7.0, "reward_scale": 3.0}
    assert linear.reward_options == {"w": [1.0, 0.0]}
    quadratic = load_train_config(path, "nabla_db", "quadratic", 0)
    assert quadratic.prompts == ("x",) and quadratic.method_options == {"output_reg": 5.0, "reward_scale": 3.0}
    assert load_train_config(path, "nabla_db", "linear", 0, eval_samples_per_prompt=4).eval_samples_per_prompt == 4
    # fetch-models lists a prompt set's files without reading them
    (dataset / "benchmark/photo.json").unlink()
    assert [str(m).split(" (")[0] for m in config_models(path)] == [f"{dataset}/benchmark/photo.json"]
