"""What a run folder keeps so that a killed run resumes exactly: files written atomically, and
append-only CSV logs that a resume cuts back to the checkpoint.

A SIGKILL can stop a process anywhere, so every file a resume reads is either complete or absent:
a checkpoint is written into ``checkpoint.tmp`` and renamed over ``checkpoint``; a CSV row is
appended in one write, and a resume keeps only complete rows up to the checkpoint's round.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any, Callable

import torch


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as (safetensors-ready tensors, JSON-ready rest)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The state dict ``optimizer_to_files`` split."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def replace_folder(final: Path, write: Callable[[Path], None]) -> Path:
    """Fill a fresh ``<final>.tmp`` with ``write`` and rename it over ``final``: a write killed
    half-way never replaces a good folder."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


class NoLog:
    """What ranks other than 0 log to."""

    def write(self, row: dict) -> None:
        pass


class CsvLog:
    """An append-only CSV whose header is fixed by its first row.

    ``resume`` None starts a new file. Otherwise the file is cut back to the complete rows whose
    ``key`` column is at most ``resume``: the rows a resumed run will write again go, and so does a
    last row a kill cut short.
    """

    def __init__(self, path: Path, resume: int | None, key: str = "round"):
        self.path = path
        self.fields: list[str] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and resume is not None:
            with path.open(newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                rows = [r for r in reader if header and len(r) == len(header)]
            self.fields = header
            self._rewrite([r for r in rows if int(r[header.index(key)]) <= resume])
        elif path.exists():
            path.unlink()

    def _rewrite(self, rows: list[list[str]]) -> None:
        with self.path.open("w", newline="") as f:
            if self.fields:
                writer = csv.writer(f)
                writer.writerow(self.fields)
                writer.writerows(rows)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
        with self.path.open("a", newline="") as f:
            f.write(buffer.getvalue())  # one write per row
