"""Prompt sets published as files of a Hugging Face dataset (e.g. HPDv2's benchmark prompts).

A training config names one in place of a list of prompts::

    prompts: {dataset: zhwang/HPDv2, files: [benchmark/photo.json, benchmark/paintings.json], start: 10}

Each file is a JSON list of strings or plain text with one prompt per line; entries
``[start:stop]`` of each file are taken, files in the order given. Like the models, the files
come only from the local Hugging Face cache (``fetch-models`` downloads them); ``dataset`` may
also be a local folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nabla.hub import HubModel, check_available


@dataclass(frozen=True)
class PromptSet:
    dataset: str
    files: tuple[str, ...]
    start: int | None = None
    stop: int | None = None

    @classmethod
    def from_config(cls, value: Mapping[str, Any]) -> "PromptSet":
        unknown = sorted(set(value) - {"dataset", "files", "start", "stop"})
        if unknown or "dataset" not in value or not value.get("files"):
            raise ValueError(f"a prompt set is {{dataset: ..., files: [...], start: N, stop: N}}; got {dict(value)!r}")
        return cls(value["dataset"], tuple(value["files"]), value.get("start"), value.get("stop"))

    def required_models(self) -> list[HubModel]:
        return [HubModel(self.dataset, f, purpose="prompt set", repo_type="dataset") for f in self.files]

    def load(self) -> tuple[str, ...]:
        """The prompts; MissingModelsError (naming every missing file) when a file is not here."""
        paths = check_available(self.required_models())
        prompts = tuple(p for path in paths.values() for p in read_prompt_file(path)[self.start : self.stop])
        if not prompts:
            raise ValueError(f"the prompt set {self} holds no prompts")
        return prompts


def read_prompt_file(path: str | Path) -> list[str]:
    """A JSON list of strings, or one prompt per non-empty line."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        prompts = json.loads(text)
        if not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
            raise ValueError(f"{path} is not a JSON list of prompt strings")
        return [p.strip() for p in prompts]
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_prompts(value: Any) -> PromptSet | None:
    """The PromptSet a config value names, or None where the value is a plain list of prompts."""
    return PromptSet.from_config(value) if isinstance(value, Mapping) else None
