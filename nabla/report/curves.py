"""Run folders' evaluation logs → one long curves table (one row per run and evaluation step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd
import yaml

RUN_KEYS = ("scale", "reward", "method", "seed")


def run_curves(run_dir: str | Path) -> pd.DataFrame:
    """A finished run's eval_log.csv with the run's scale, reward, method and seed as columns."""
    run_dir = Path(run_dir)
    if not (run_dir / "done.json").exists():
        raise FileNotFoundError(f"run {run_dir} is not finished (no done.json)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    curves = pd.read_csv(run_dir / "eval_log.csv")
    for key in reversed(RUN_KEYS):
        curves.insert(0, key, config[key])
    # a run stopped by a NaN/inf: its last evaluations can be astronomically large
    curves["diverged"] = json.loads((run_dir / "done.json").read_text()).get("diverged_at") is not None
    return curves


def collect_curves(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    return pd.concat([run_curves(d) for d in run_dirs], ignore_index=True)
