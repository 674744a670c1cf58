"""One protocol's group records → its results folder, and the tuning runs → the selection.

``aggregate`` writes, for one (scale, protocol), into one folder: ``summary.csv`` (a row per run
and the prior's), ``curves.csv`` (the dense evaluations), ``levels.json`` (the matched-reward
levels), ``matched.csv``, the end-of-budget and matched-reward tables, at toy2d the mode masses,
and ``samples.json`` (what the sample figures draw: seed 0 of every method, and the prior).
``select_settings`` applies the protocol's one selection rule (:mod:`nabla.protocol`) to the
tuning runs and writes ``selected.yaml``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import yaml

from nabla.evaluation import write_json
from nabla.protocol import (SELECTION_DIVERGENCE, at_matched_reward, divergence_bound_at_level, reward_fraction,
                            select)
from nabla.report.tables import (
    FIGURE_ONLY, LEVELS, MATCHED_COLUMNS, REFERENCE, TABLE_COLUMNS, curves_frame, end_of_budget_table, kind,
    matched_frame, matched_table, mean_vector_table, order_key, reward_levels, run_plateaus, summary_frame,
    tuning_table, write_tables,
)
from nabla.runs import read_groups


def _exact_levels(runs: list[dict]) -> dict[str, dict]:
    return {run["reward"]: run["levels"] for run in runs if run.get("levels")}


def _figure_records(runs: list[dict], priors: list[dict]) -> dict[str, list[dict]]:
    """Per reward: the prior's and each method's first seed's figure material, in method order."""
    chosen: dict[str, dict[str, dict]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        if run.get("metrics"):
            chosen.setdefault(run["reward"], {}).setdefault(run["method"], {"method": run["method"], "seed": run["seed"], **{
                k: run["metrics"][k] for k in FIGURE_ONLY if k in run["metrics"]}})
    for prior in priors:
        chosen.setdefault(prior["reward"], {})["pretrained"] = {
            "method": "pretrained", **{k: prior[k] for k in FIGURE_ONLY if k in prior}}
    return {reward: sorted(methods.values(), key=lambda r: order_key(r["method"])) for reward, methods in chosen.items()}


def aggregate(scale: str, protocol: str, groups: Sequence[str | Path], priors: Sequence[str | Path], out: str | Path,
              fractions: Sequence[float] = LEVELS) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = read_groups(groups)
    prior_records = [json.loads(Path(p).read_text()) for p in priors]
    written = []
    summary = summary_frame(runs, prior_records)
    curves = curves_frame(runs)
    plateaus = run_plateaus(curves)
    if any(v is not None for v in plateaus.values()):  # curves with the reward's spread (nabla.protocol)
        summary["plateaued"] = [plateaus.get(f"{r}/{m}/{run}")
                                for r, m, run in zip(summary["reward"], summary["method"], summary["run"])]
    summary.to_csv(out / "summary.csv", index=False)
    curves.to_csv(out / "curves.csv", index=False)
    written += [out / "summary.csv", out / "curves.csv"]
    what = f"{scale}, {protocol} protocol"
    columns = TABLE_COLUMNS[kind(scale)]
    if protocol == "tune":  # one row per grid point, measured on the validation split only
        caption = f"{what}: every grid point at the end of its budget, validation split (one seed)"
        written += write_tables([(tuning_table(curves, columns), caption)], out / "table")
    else:
        caption = (f"{what}, end of budget, evaluation split: mean ± sample std over the seeds counted; the prior "
                   "evaluated once (no std)")
        tables = [(end_of_budget_table(summary, columns), caption)]
        if scale == "toy2d":
            tables.append((mean_vector_table(summary, "masses", "target_masses"),
                           "mass per prior mixture component, mean over seeds"))
        written += write_tables(tables, out / "table")
    written.append(write_json(out / "samples.json", _figure_records(runs, prior_records)))
    levels = reward_levels(curves, _exact_levels(runs), fractions)
    written.append(write_json(out / "levels.json", levels))
    matched = matched_frame(curves, levels, MATCHED_COLUMNS[kind(scale)])
    matched.to_csv(out / "matched.csv", index=False)
    split = "validation" if protocol == "tune" else "evaluation"
    caption = (f"{what}, at matched reward: the level is a fraction of the way from the prior's mean reward to "
               f"{REFERENCE[kind(scale)]}; "
               f"the crossing is located on the validation split, the metrics read on the {split} split there; "
               "mean ± sample std over the seeds that reached it")
    written += [out / "matched.csv", *write_tables([(matched_table(matched, MATCHED_COLUMNS[kind(scale)]), caption)],
                                                   out / "matched")]
    return written


def select_settings(scale: str, groups: Sequence[str | Path], out: str | Path, fraction: float) -> dict:
    """The one selection rule on every method's tuning runs; ``selected.yaml`` holds per reward and
    method the chosen settings, the validation score of every grid point, and the edge check."""
    runs = read_groups(groups)
    curves = curves_frame(runs)
    levels = reward_levels(curves, _exact_levels(runs), [fraction])
    divergence = SELECTION_DIVERGENCE[scale]
    selected: dict = {"rule": f"per reward and method, the grid point with the lowest {divergence} (validation) "
                              f"where the validation reward first reaches {fraction:.0%} of the way from the prior's "
                              f"mean reward to {REFERENCE[kind(scale)]}, the larger of its values at the two "
                              "evaluations around that crossing (ties: the lower one interpolated to the crossing); "
                              "if no point reaches it, the one that got closest",
                      "level": fraction, "rewards": {}}
    for (reward, method), group in curves.groupby(["reward", "method"], sort=False):
        target, info = levels[reward]["levels"][fraction], levels[reward]
        points = []
        for run in [r for r in runs if r["reward"] == reward and r["method"] == method]:
            run_curves = group[group["run"] == run["run"]]
            at = at_matched_reward(run_curves, target, [divergence])
            points.append({"point": run["run"], "settings": run["settings"], "reached": at["reached"],
                           divergence: divergence_bound_at_level(run_curves, target, divergence),
                           "interpolated": at.get(divergence, math.nan),
                           "fraction": reward_fraction(at["max_reward"], info["prior_reward"], info["reference_reward"])})
        chosen = select(points, divergence)
        entry = selected["rewards"].setdefault(reward, {"levels": {
            "prior_reward": info["prior_reward"], "reference_reward": info["reference_reward"], "level_reward": target,
            **({"method_reaches": info["method_reaches"]} if "method_reaches" in info else {})},
            "methods": {}})
        entry["methods"][method] = {
            "settings": chosen["settings"], "point": chosen["point"], "why": chosen["rule"], "edges": chosen["edges"],
            "validation": [{**p, **{key: None if not math.isfinite(p[key]) else round(p[key], 5)
                                    for key in (divergence, "interpolated")},
                            "fraction": round(p["fraction"], 4)} for p in points],
        }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(yaml.dump(selected, Dumper=_NoAliases, sort_keys=False))
    return selected


class _NoAliases(yaml.SafeDumper):
    """Every value written out in full: selected.yaml is read by people."""

    def ignore_aliases(self, data) -> bool:
        return True
