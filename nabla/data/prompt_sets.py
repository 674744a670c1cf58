"""Prompt sets published as files: of a Hugging Face dataset (HPDv2's benchmark prompts) or at a
URL (DrawBench's sheet). A training config names one in place of a list of prompts::

    prompts: {dataset: zhwang/HPDv2, files: [benchmark/photo.json, benchmark/paintings.json], start: 10}
    prompts: {url: https://…/export.csv, file: drawbench.csv, column: Prompts, group_by: Category,
              exclude: [Misspellings], start: 2}

A file is a JSON list of strings, a CSV (prompts in ``column``, optionally grouped by
``group_by``), or plain text with one prompt per line. Entries ``[start:stop]`` of each file are
taken, or of each group of a file where ``group_by`` is set, files and groups in their order;
groups named in ``exclude`` are left out. Like the models, the files come only from local caches
(``fetch-models`` downloads them): the Hugging Face cache for a dataset (``dataset`` may also be
a local folder), ``HF_HOME/nabla/<file>`` for a URL.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nabla.hub import HubModel, UrlModel, check_available

KEYS = {"dataset", "files", "url", "file", "column", "group_by", "exclude", "start", "stop"}


@dataclass(frozen=True)
class PromptSet:
    files: tuple[str, ...]
    dataset: str | None = None  # the files of this Hugging Face dataset (or local folder)
    url: str | None = None  # or: one file at this URL, cached as files[0]
    column: str | None = None  # CSV files: the prompts' column
    group_by: str | None = None  # CSV files: slice each group of this column
    exclude: tuple[str, ...] = ()
    start: int | None = None
    stop: int | None = None

    @classmethod
    def from_config(cls, value: Mapping[str, Any]) -> "PromptSet":
        value = dict(value)
        source_ok = ("dataset" in value and value.get("files") and "url" not in value) or (
            "url" in value and value.get("file") and "dataset" not in value)
        if set(value) - KEYS or not source_ok:
            raise ValueError(f"a prompt set is {{dataset: ..., files: [...]}} or {{url: ..., file: NAME}}, with "
                             f"optional column, group_by, exclude, start, stop; got {value!r}")
        files = tuple(value.pop("files", None) or [value.pop("file")])
        return cls(files, **{k: tuple(v) if k == "exclude" else v for k, v in value.items()})

    def required_models(self) -> list[HubModel | UrlModel]:
        if self.url is not None:
            return [UrlModel(self.url, purpose="prompt set", filename=self.files[0])]
        return [HubModel(self.dataset, f, purpose="prompt set", repo_type="dataset") for f in self.files]

    def load(self) -> tuple[str, ...]:
        """The prompts; MissingModelsError (naming every missing file) when a file is not here."""
        prompts = []
        for path in check_available(self.required_models()).values():
            groups: dict[str | None, list[str]] = {}
            for group, prompt in read_prompt_file(path, self.column, self.group_by):
                groups.setdefault(group, []).append(prompt)
            excluded = {g.strip() for g in self.exclude}
            prompts += [p for g, ps in groups.items() if (g or "").strip() not in excluded for p in ps[self.start : self.stop]]
        if not prompts:
            raise ValueError(f"the prompt set {self} holds no prompts")
        return tuple(prompts)


def read_prompt_file(path: str | Path, column: str | None = None, group_by: str | None = None) -> list[tuple[str | None, str]]:
    """(group, prompt) rows of a JSON list of strings, a CSV (``column``, ``group_by``; a header
    row) or one prompt per non-empty line; the group is None without ``group_by``."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        prompts = json.loads(text)
        if not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
            raise ValueError(f"{path} is not a JSON list of prompt strings")
        return [(None, p.strip()) for p in prompts]
    if Path(path).suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        missing = [c for c in (column, group_by) if c is not None and rows and c not in rows[0]]
        if column is None or missing:
            raise ValueError(f"{path}: a CSV prompt file needs its prompts' column (column: NAME); "
                             f"columns: {', '.join(rows[0]) if rows else 'none'}")
        return [(row[group_by] if group_by else None, row[column].strip()) for row in rows if row[column].strip()]
    return [(None, line.strip()) for line in text.splitlines() if line.strip()]


def parse_prompts(value: Any) -> PromptSet | None:
    """The PromptSet a config value names, or None where the value is a plain list of prompts."""
    return PromptSet.from_config(value) if isinstance(value, Mapping) else None
