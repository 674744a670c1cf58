"""Group records → one scale's and protocol's summary, curves and tables.

Two tables per protocol, both as Markdown and LaTeX:

* ``table``: the end of the budget (the paper's Table 1 shape): per (reward, method) the mean ±
  sample std (ddof 1) over seeds of each metric on the evaluation split, the seed count, and the
  budget spent (rounds, updates, trajectories, seconds), and how many seeds' validation reward
  has flattened (``plateaued``, :func:`nabla.protocol.plateaued`); a diverged run is named with the
  update it diverged at and is measured at its last finite weights. The prior is evaluated once:
  one row, no std.
* ``matched``: at matched reward (:mod:`nabla.protocol`): per level, the seeds that reached it and
  the metrics at the crossing; "not reached (max r = …)" where none did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from nabla.protocol import at_matched_reward, level, majority_reach, plateaued

PRIOR_ROW = "pretrained"  # the reference row of every table and figure, before the methods


def method_order() -> tuple[str, ...]:
    """The order methods appear in every table and figure: the prior, then the registry's order."""
    from nabla.methods import registry

    return (PRIOR_ROW, *registry())


#: metrics of the end-of-budget table, and those read at matched reward, per kind of scale
TABLE_COLUMNS = {
    "toy2d": ("reward_mean", "energy_distance_target", "mass_tv_target", "energy_distance_own_target",
              "energy_distance_prior"),
    "images": ("reward_mean", "diversity", "fid_to_prior", "fid_to_prior_pooled"),
}
MATCHED_COLUMNS = {
    "toy2d": ("energy_distance_target", "mass_tv_target", "energy_distance_own_target", "energy_distance_prior"),
    "images": ("diversity", "fid_to_prior"),
}
LEVELS = (0.5, 0.75)
#: what the matched-reward levels are fractions of the way to, per kind of scale (nabla.protocol)
REFERENCE = {"toy2d": "the exact target's mean reward",
             "images": "the highest validation reward a strict majority of the methods reach"}
#: run-record entries that only the sample figures read
FIGURE_ONLY = ("samples", "target", "sample_strip", "sample_strip_prompts")


def kind(scale: str) -> str:
    return "toy2d" if scale == "toy2d" else "images"


def order_key(method: str) -> int:
    order = method_order()
    return order.index(method) if method in order else len(order)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ("reward", "method", "seed", "level") if k in frame]
    return frame.assign(_order=frame["method"].map(order_key)).sort_values(
        ["reward", "_order", *keys[2:]]).drop(columns="_order").reset_index(drop=True)


# -- frames from records --------------------------------------------------------------------------
def summary_frame(runs: Iterable[dict], priors: Iterable[dict] = ()) -> pd.DataFrame:
    """One row per run (and per prior evaluation): identity, settings, budget spent, final metrics."""
    rows = []
    for run in runs:
        metrics = {k: v for k, v in (run.get("metrics") or {}).items()
                   if k not in FIGURE_ONLY and k not in ("scale", "reward", "method", "seed")}
        rows.append({"reward": run["reward"], "method": run["method"], "run": run["run"], "seed": run["seed"],
                     "settings": json.dumps(run["settings"], sort_keys=True), **run["train"],
                     **{k: json.dumps(v) if isinstance(v, list) else v for k, v in metrics.items()}})
    for prior in priors:
        rows.append({"reward": prior["reward"], "method": "pretrained", "run": "prior",
                     **{k: json.dumps(v) if isinstance(v, list) else v for k, v in prior.items()
                        if k not in FIGURE_ONLY and k not in ("scale", "reward", "method")}})
    return _sorted(pd.DataFrame(rows))


def run_plateaus(curves: pd.DataFrame) -> dict[str, bool | None]:
    """Per run (reward/method/run): whether its validation reward has flattened (None: fewer
    than 3 evaluations, a missing one, or curves without the reward's spread)."""
    out = {}
    if "reward_std" not in curves:  # records without the spread: unknown
        return out
    for (reward, method, run), group in curves[curves["split"] == "validation"].groupby(["reward", "method", "run"]):
        group = group.sort_values("round")
        known = len(group) >= 3 and group[["reward_mean", "reward_std"]].notna().all().all()
        out[f"{reward}/{method}/{run}"] = (
            plateaued(group["round"].tolist(), group["reward_mean"].tolist(), group["reward_std"].iloc[-1])
            if known else None)
    return out


def curves_frame(runs: Iterable[dict]) -> pd.DataFrame:
    """The dense evaluations of every run: one row per (run, evaluation, split)."""
    frames = [pd.DataFrame(run["curves"]).assign(reward=run["reward"], method=run["method"], run=run["run"],
                                                 seed=run["seed"], settings=json.dumps(run["settings"], sort_keys=True),
                                                 diverged=run["train"].get("diverged_at") is not None)
              for run in runs]
    frame = pd.concat(frames, ignore_index=True)
    text = ("reward", "method", "run", "settings", "split")
    for column in frame:  # a metric no run has (null in every record) is NaN, not None
        if column not in text:
            frame[column] = pd.to_numeric(frame[column])
    return _sorted(frame[["reward", "method", "run", "seed", *[c for c in frame if c not in ("reward", "method", "run", "seed")]]])


# -- formatting ---------------------------------------------------------------------------------
def number(value: float, digits: int = 3) -> str:
    """Fixed point, or 3 significant digits where a value is far from 1 (a diverging run's)."""
    if not math.isfinite(value):
        return "–"
    if digits == 0 and abs(value) < 1e9:  # counts (trajectories, rounds)
        return f"{value:.0f}"
    return f"{value:.{digits}f}" if 1e-2 <= abs(value) < 1e4 or value == 0 else f"{value:.3g}"


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'mean ± sample std' (ddof 1); the value alone for one number; '–' for none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    series = pd.Series(values, dtype=float)
    if len(series) == 1:
        return number(series.iloc[0], digits)
    return f"{number(series.mean(), digits)} ± {number(series.std(ddof=1), digits)}"


# -- the two tables -------------------------------------------------------------------------------
def end_of_budget_table(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows (reward, method): seeds, status, budget and 'mean ± std' of each metric."""
    rows = []
    for (reward, method), group in summary.groupby(["reward", "method"], sort=False):
        row = {"reward": reward, "method": method, "seeds": len(group) if method != "pretrained" else "–"}
        if "diverged_at" in group and group["diverged_at"].notna().any():
            steps = ", ".join(str(int(s)) for s in group["diverged_at"].dropna())
            row["status"] = f"diverged at update {steps} ({group['diverged_at'].notna().sum()} of {len(group)})"
        else:
            row["status"] = "–" if method == "pretrained" else "finished"
        for budget in ("rounds", "updates", "trajectories"):  # the same for every seed unless one diverged
            row[budget] = f"{group[budget].mean():.0f}" if budget in group and method != "pretrained" else "–"
        row["train_seconds"] = mean_std(group["train_seconds"].tolist(), 1) if method != "pretrained" else "–"
        if "plateaued" in summary:
            known = group["plateaued"].dropna() if method != "pretrained" else ()
            row["plateaued"] = f"{int(sum(known))} of {len(known)}" if len(known) else "–"
        for column in columns:
            row[column] = mean_std(group[column].tolist()) if column in group else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def method_reaches(validation: pd.DataFrame) -> dict[str, float]:
    """Per method: the highest reward its seed-mean validation curve reaches, at its best setting
    (a tuning grid's runs are one seed at several settings, a comparison's several seeds at one)."""
    curve = validation.groupby(["method", "settings", "round"])["reward_mean"].mean()
    return {method: float(reach) for method, reach in curve.groupby(level="method").max().items()}


def reward_levels(curves: pd.DataFrame, levels_by_run: dict, fractions: Sequence[float]) -> dict[str, dict]:
    """Per reward: the prior's and the reference reward, and each fraction's level.

    Where the runs carry exact levels (toy2d) those are used; else the prior's reward is the
    validation reward at round 0 (every run starts as the prior) and the reference the highest
    validation reward a majority of the methods reach (:func:`nabla.protocol.majority_reach`),
    recorded with every method's reach.
    """
    out = {}
    for reward, group in curves[curves["split"] == "validation"].groupby("reward"):
        exact = levels_by_run.get(reward) or {}
        entry = {}
        if exact:
            prior, reference = exact["prior_reward"], exact["target_reward"]
        else:
            prior = float(group.loc[group["round"] == 0, "reward_mean"].iloc[0])
            entry["method_reaches"] = method_reaches(group)
            reference = majority_reach(entry["method_reaches"])
        out[reward] = {"prior_reward": prior, "reference_reward": reference,
                       "levels": {f: level(prior, reference, f) for f in fractions}, **entry}
    return out


def matched_frame(curves: pd.DataFrame, levels: dict[str, dict], columns: Sequence[str]) -> pd.DataFrame:
    """One row per (run, level): whether it reached the level and its metrics at the crossing."""
    rows = []
    for (reward, method, run, seed), group in curves.groupby(["reward", "method", "run", "seed"], sort=False):
        for fraction, target in levels[reward]["levels"].items():
            rows.append({"reward": reward, "method": method, "run": run, "seed": seed, "level": fraction,
                         "level_reward": target, **at_matched_reward(group, target, columns)})
    return _sorted(pd.DataFrame(rows))


def matched_table(matched: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows (reward, level, method): seeds reaching the level, and 'mean ± std' at the crossing."""
    rows = []
    for (reward, fraction, method), group in matched.groupby(["reward", "level", "method"], sort=False):
        hit = group[group["reached"]]
        row = {"reward": reward, "level": f"{fraction:.0%} (r = {group['level_reward'].iloc[0]:.3g})", "method": method,
               "reached": f"{len(hit)} of {len(group)}"}
        if hit.empty:
            row["trajectories"] = f"not reached (max r = {group['max_reward'].max():.3g})"
        else:
            row["trajectories"] = mean_std(hit["trajectories"].tolist(), 0)
            for column in ("reward_mean", *columns):
                row[column] = mean_std(hit[column].tolist()) if column in hit else "–"
        rows.append(row)
    table = pd.DataFrame(rows).fillna("–")
    return table.sort_values(["reward", "level"], kind="stable").reset_index(drop=True)


def mean_vector_table(frame: pd.DataFrame, column: str, reference: str | None = None, digits: int = 3) -> pd.DataFrame:
    """Rows (reward, method), one cell per vector entry (e.g. mass per mixture component), mean over seeds.

    `reference` names a vector column that is the same for every run (e.g. the exact target
    masses); it is added as a first row per reward.
    """
    frame = frame[frame[column].notna()]
    vectors = frame[column].map(json.loads)
    width = len(vectors.iloc[0])
    entries = pd.DataFrame(vectors.tolist(), columns=[f"{column}[{i}]" for i in range(width)], index=frame.index)
    table = pd.concat([frame[["reward", "method"]], entries], axis=1).groupby(["reward", "method"], sort=False).mean()
    if reference:
        exact = frame.groupby("reward", sort=False)[reference].first().dropna().map(json.loads)
        rows = pd.DataFrame(exact.tolist(), columns=table.columns, index=pd.MultiIndex.from_tuples(
            [(reward, "exact target") for reward in exact.index], names=["reward", "method"]))
        table = pd.concat([rows, table])
    return table.round(digits).reset_index()


def tuning_table(curves: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows (reward, method, grid point): its last validation evaluation."""
    last = curves[curves["split"] == "validation"].sort_values("round").groupby(["reward", "method", "run"], sort=False).tail(1)
    table = _sorted(last)[["reward", "method", "run", "round", *[c for c in columns if c in last]]]
    return table.rename(columns={"run": "point"}).round(4)


def write_tables(tables: Sequence[tuple[pd.DataFrame, str]], stem: str | Path) -> list[Path]:
    """`stem`.md and `stem`.tex: each (table, caption) in turn."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, tex = stem.with_suffix(".md"), stem.with_suffix(".tex")
    md.write_text("\n".join(f"{caption}\n\n{table.to_markdown(index=False)}\n" for table, caption in tables))
    label = lambda i: f"tab:{stem.parent.name}-{stem.name}" + (f"-{i}" if i else "")  # noqa: E731
    tex.write_text("\n".join(table.to_latex(index=False, escape=True, caption=caption, label=label(i)).replace("±", r"$\pm$")
                             for i, (table, caption) in enumerate(tables)))
    return [md, tex]
