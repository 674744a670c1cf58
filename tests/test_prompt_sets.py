"""Prompt sets from dataset files, and the per-reward part of a training config."""

from __future__ import annotations

import json

import pytest
import yaml

from nabla.data.prompt_sets import PromptSet, read_prompt_file
from nabla.hub import MissingModelsError
from nabla.config import config_models, load_train_config


@pytest.fixture()
def dataset(tmp_path):
    folder = tmp_path / "hpd"
    (folder / "benchmark").mkdir(parents=True)
    (folder / "benchmark/photo.json").write_text(json.dumps([f"photo {i}" for i in range(5)]))
    (folder / "benchmark/paintings.txt").write_text("painting 0\n\n painting 1 \npainting 2\n")
    return folder


def test_prompt_files_are_json_lists_or_lines(dataset, tmp_path):
    assert read_prompt_file(dataset / "benchmark/paintings.txt") == [(None, "painting 0"), (None, "painting 1"), (None, "painting 2")]
    (tmp_path / "bad.json").write_text(json.dumps({"prompts": ["a"]}))
    with pytest.raises(ValueError, match="not a JSON list of prompt strings"):
        read_prompt_file(tmp_path / "bad.json")


def test_a_prompt_set_slices_each_file_then_concatenates(dataset):
    files = ("benchmark/photo.json", "benchmark/paintings.txt")
    assert PromptSet(files, dataset=str(dataset), start=3).load() == ("photo 3", "photo 4")
    assert PromptSet(files, dataset=str(dataset), stop=1).load() == ("photo 0", "painting 0")
    with pytest.raises(ValueError, match="holds no prompts"):
        PromptSet(files, dataset=str(dataset), start=9).load()
    with pytest.raises(ValueError, match=r"a prompt set is \{dataset"):
        PromptSet.from_config({"dataset": str(dataset), "file": "benchmark/photo.json"})


DRAWBENCH_LIKE = """Prompts,Category,Note
A red cube.,Colors,
A blue ball.,Colors,
A green hat.,Colors,
Tw0 cats.,Misspellings,
Three dogs.,Counting,
Four birds.,Counting,
A cat left of a dog.,Gary Marcus et al. ,
"Five, no six cars.",Counting,
"""


def test_a_csv_prompt_set_from_a_url_is_sliced_per_category(empty_hf_home):
    config = {"url": "https://example.org/sheet/export?format=csv", "file": "bench.csv", "column": "Prompts",
              "group_by": "Category", "exclude": ["Misspellings"]}
    train, held_out = PromptSet.from_config({**config, "start": 1}), PromptSet.from_config({**config, "stop": 1})
    with pytest.raises(MissingModelsError, match=r"https://example\.org/sheet/export\?format=csv \(prompt set\)"):
        train.load()
    (empty_hf_home / "nabla").mkdir()
    (empty_hf_home / "nabla" / "bench.csv").write_text(DRAWBENCH_LIKE)
    assert train.load() == ("A blue ball.", "A green hat.", "Four birds.", "Five, no six cars.")
    assert held_out.load() == ("A red cube.", "Three dogs.", "A cat left of a dog.")
    with pytest.raises(ValueError, match="needs its prompts' column.*columns: Prompts, Category, Note"):
        PromptSet.from_config({**config, "column": "prompt"}).load()


def test_a_missing_prompt_file_is_named_with_the_dataset(empty_hf_home):
    with pytest.raises(MissingModelsError, match=r"datasets/nabla-test/absent/p\.json \(prompt set\)"):
        PromptSet(("p.json",), dataset="nabla-test/absent").load()


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
