"""Run groups: several runs of one (scale, protocol, reward, method) in one process.

A workflow job trains a group of runs (seeds, or tuning grid points) one after the other in one
process, each in its own resumable run folder, evaluates each finished one, and writes one record
of the group: per run its settings, training summary, dense-evaluation curves and final metrics.
At toy2d, where a run takes seconds, that saves a process start per run; at the image scales a
group is one run. A rerun after a crash skips what finished (done.json, and the evaluation cached
beside it) and resumes the interrupted run from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from nabla.config import load_train_config
from nabla.evaluation import evaluate_run, write_json
from nabla.rewards import build_reward


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a group: its folder name, seed and chosen settings (nabla.config.apply_settings)."""

    name: str
    seed: int
    settings: dict = dataclasses.field(default_factory=dict)


def cached_evaluation(run_dir: Path, options: dict) -> dict:
    """The final evaluation of a finished run, reused while the run and the options are the same."""
    cache = run_dir / "metrics.json"
    if cache.exists() and cache.stat().st_mtime >= (run_dir / "done.json").stat().st_mtime:
        saved = json.loads(cache.read_text())
        if saved.get("options") == options:
            return saved["metrics"]
    metrics = evaluate_run(run_dir, **options)
    write_json(cache, {"options": options, "metrics": metrics})
    return json.loads(cache.read_text())["metrics"]


def exact_levels(cfg) -> dict[str, float]:
    """toy2d: the exact mean rewards of the prior and of the tilted target (else empty)."""
    if cfg.scale != "toy2d" or cfg.eval_target_beta is None:
        return {}
    from nabla.models.toy2d import load_toy2d

    reward, prior = build_reward(cfg.reward, **cfg.reward_options), load_toy2d(cfg.model).mixture
    return {"prior_reward": reward.expected(prior),
            "target_reward": reward.expected(reward.exact_target(prior, cfg.eval_target_beta))}


def run_group(config: str | Path, method: str, reward: str, runs: list[RunSpec], root: str | Path,
              out: str | Path, overrides: dict | None = None, shared: dict | None = None,
              evaluation: dict | None = None, identity: dict | None = None, progress: bool = False) -> dict:
    """Train (or resume, or skip) each run of a group in ``root/<name>``, evaluate each finished
    one with ``evaluation`` (evaluate_run's options; None: no final evaluation, as for tuning
    runs) and write the group's record to ``out``. ``overrides``: TrainConfig keys; ``shared``:
    settings of every run (nabla.config.apply_settings) that are not the runs' own choices."""
    from nabla.trainer import Trainer

    root = Path(root)
    records = []
    for spec in runs:
        cfg = load_train_config(config, method, reward, spec.seed, {**(shared or {}), **spec.settings},
                                **(overrides or {}))
        run_dir = root / spec.name
        summary = Trainer(cfg, run_dir, progress=progress, on_config_change="restart", config_path=str(config)).run()
        print(f"{method}/{reward}/{spec.name}: {summary['rounds']} rounds, {summary['updates']} updates, "
              f"{summary['train_seconds']} s" + (f", diverged at update {summary['diverged_at']}" if "diverged_at" in summary else ""))
        curves = pd.read_csv(run_dir / "eval_log.csv")
        records.append({
            "run": spec.name, "seed": spec.seed, "settings": spec.settings,
            "levels": exact_levels(cfg),
            "train": {k: summary.get(k) for k in ("rounds", "updates", "trajectories", "train_seconds", "diverged_at",
                                                  "target", "target_beta")},
            "curves": curves.to_dict(orient="records"),
            "metrics": cached_evaluation(run_dir, evaluation) if evaluation is not None else None,
        })
    record = {**(identity or {}), "reward": reward, "method": method, "runs": records}
    write_json(out, record)
    return record


def read_groups(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Group records, flattened to one dict per run with the group's identity on each."""
    rows = []
    for path in paths:
        group = json.loads(Path(path).read_text())
        identity = {k: v for k, v in group.items() if k != "runs"}
        rows += [{**identity, **run} for run in group["runs"]]
    return rows
