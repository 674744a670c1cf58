"""The comparison protocol: tuning grids, matched-reward levels, and the one selection rule.

* A tuning grid gives every method the same number of runs (``tune.runs_per_method``): the
  Cartesian product of a few values of its own knobs (its strength knob and lr), in the order of
  :func:`grid_points`. Tuning runs train on the training prompts with one seed and are measured on
  the validation split only.
* Matched reward: a level is a fraction f of the way from the prior's mean reward to a reference,
  L(f) = r_prior + f·(r_ref − r_prior); at toy2d r_prior and r_ref = E_{p#·exp(βr)}[r] are exact,
  at the image scales r_ref is the highest validation reward a strict majority of the methods
  reach (:func:`majority_reach`). A method's reach is the maximum over rounds of its seed-mean
  validation curve, taking its best setting where it has several (tuning grids). A majority,
  not the best method, sets r_ref so that no minority of methods (one that hacks the reward, say)
  can put every level out of the others' reach; a majority, not every method, so that a method
  that does not move the reward cannot pin the levels to the prior.
  A run crosses L at the first (linearly interpolated) round where its validation reward reaches
  it; what it is compared on (its divergences) is read at that round from its evaluation split
  (the validation split for tuning runs), interpolated the same way.
* Plateau: a run's budget was enough when its validation reward has flattened: the least-squares
  line through the last half of its evaluations rises (or falls) over that half by less than a
  tenth of the larger of the run's whole change from the prior and the reward's spread between
  samples (its sample std at the last evaluation; :func:`plateaued`). The spread, not a standard
  error, sets the floor: every evaluation draws the same seeds, so the curve's own noise is far
  below the standard error of one evaluation's mean, and a change under a tenth of the spread is
  negligible. A diverged run counts as collapsed.
* Selection: per (reward, method), the grid point with the lowest divergence at the level
  ``tune.level`` among those that reach it; if none does, the one whose reward got closest to it.
  The divergence is the energy distance to p#·exp(βr) at toy2d and FID-to-prior at the image scales,
  read on the validation split as the larger of its values at the two evaluations around the
  crossing (:func:`divergence_bound_at_level`), not interpolated to it. Where the divergence moves
  monotonically between two evaluations this bounds it at the crossing from above, whichever way it
  moves with the reward (FID-to-prior grows, the distance to the target at toy2d falls), so a coarse
  evaluation grid can only count against a point, never for it. An interpolation credits a point
  whose reward jumps past the level between two evaluations with a divergence no evaluation showed
  (ReFL's λ = 100 in the tuned tiny run: FID 18.6 interpolated from the prior's 0 and the 97.6 of
  its first evaluation, already far past the level, the lowest of its grid). Points whose bounds
  tie (the same evaluation bounds them, the prior's for two points that both pass the level before
  the first evaluation) are told apart by the interpolated divergence.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import yaml

#: the divergence the selection rule minimises at the matched level, per scale
SELECTION_DIVERGENCE = {"toy2d": "energy_distance_target", "tiny": "fid_to_prior", "sd15": "fid_to_prior"}


def grid_points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values, keys in their given order, the last varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def grid_size(grid: dict[str, Sequence[Any]]) -> int:
    return math.prod(len(v) for v in grid.values())


def level(prior_reward: float, reference_reward: float, fraction: float) -> float:
    return prior_reward + fraction * (reference_reward - prior_reward)


def majority_reach(reaches: Mapping[str, float]) -> float:
    """The highest reward that a strict majority of the methods reach: the (⌊n/2⌋ + 1)-th highest
    of their reaches (the median for an odd n, the lower middle one for an even n)."""
    values = sorted((float(v) for v in reaches.values()), reverse=True)
    if not values or any(math.isnan(v) for v in values):
        raise ValueError(f"the majority reach needs one reach per method and no NaN, got {dict(reaches)}")
    return values[len(values) // 2]


def reward_fraction(reward: float, prior_reward: float, reference_reward: float) -> float:
    """How far a reward is from the prior's towards the reference (0 at the prior, 1 there)."""
    return (reward - prior_reward) / (reference_reward - prior_reward)


#: the share of a run's whole change that its last half may still add and count as flat
PLATEAU_SHARE = 0.1


def plateaued(rounds: Sequence[float], rewards: Sequence[float], spread: float) -> bool:
    """Whether a validation reward curve has flattened (module docstring); needs ≥ 3 evaluations."""
    if len(rounds) < 3:
        raise ValueError(f"a plateau needs at least 3 evaluations, got {len(rounds)}")
    half = math.ceil(len(rounds) / 2)  # the last half, the middle evaluation included
    x = pd.Series(rounds[-half:], dtype=float)
    y = pd.Series(rewards[-half:], dtype=float)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    rise = abs(slope * (x.iloc[-1] - x.iloc[0]))
    return bool(rise < PLATEAU_SHARE * max(abs(rewards[-1] - rewards[0]), spread))


def first_reaching_evaluation(rewards: Sequence[float], target: float) -> int | None:
    """The index of the first evaluation whose reward reaches ``target`` (None: none does).

    Non-finite rewards (a diverged evaluation) end the curve.
    """
    for k, value in enumerate(rewards):
        if not math.isfinite(value):
            return None
        if value >= target:
            return k
    return None


def first_crossing(rounds: Sequence[float], rewards: Sequence[float], target: float) -> float | None:
    """The first round at which a piecewise-linear reward curve reaches ``target`` (None: never)."""
    k = first_reaching_evaluation(rewards, target)
    if k is None:
        return None
    if k == 0:  # the prior is already there
        return float(rounds[0])
    (r0, v0), (r1, v1) = (rounds[k - 1], rewards[k - 1]), (rounds[k], rewards[k])
    return float(r0 + (target - v0) / (v1 - v0) * (r1 - r0))


def value_at(rounds: Sequence[float], values: Sequence[float], at: float) -> float:
    """A curve's value at a (fractional) round, linearly interpolated between evaluations."""
    pairs = sorted(zip(rounds, values))
    for (r0, v0), (r1, v1) in zip(pairs, pairs[1:]):
        if r0 <= at <= r1:
            return float(v0 if r1 == r0 else v0 + (at - r0) / (r1 - r0) * (v1 - v0))
    if pairs and at == pairs[-1][0]:
        return float(pairs[-1][1])
    raise ValueError(f"round {at} is outside the evaluated rounds {pairs[0][0]}..{pairs[-1][0]}")


def at_matched_reward(curves: pd.DataFrame, target: float, columns: Iterable[str]) -> dict[str, Any]:
    """One run's crossing of a reward level and its metrics there.

    ``curves``: the run's dense evaluation rows (columns round, trajectories, seconds, split,
    reward_mean, ...). The crossing is located on the validation split and the metrics are read on
    the evaluation split where the run has one.
    """
    validation = curves[curves["split"] == "validation"].sort_values("round")
    if validation.empty:
        raise ValueError("a matched-reward crossing is located on the validation split: the run has none")
    measured = curves[curves["split"] == "evaluation"].sort_values("round")
    measured = validation if measured.empty else measured
    crossing = first_crossing(validation["round"].tolist(), validation["reward_mean"].tolist(), target)
    trained = validation[validation["round"] > 0]  # round 0 is the prior, the same for every run
    row: dict[str, Any] = {"reached": crossing is not None,
                           "max_reward": float((trained if len(trained) else validation)["reward_mean"].max())}
    if crossing is None:
        return row
    row["round"] = crossing
    for column in ("trajectories", "seconds", "reward_mean", *columns):
        if column in measured:
            row[column] = value_at(measured["round"].tolist(), measured[column].tolist(), crossing)
    return row


def divergence_bound_at_level(curves: pd.DataFrame, target: float, column: str) -> float:
    """The selection's reading of ``column`` at a run's first crossing of ``target`` on the validation
    split: the larger of its values at the evaluations just before and at or after the crossing (the
    one evaluation where the crossing falls on it); NaN where the run never reaches ``target``."""
    validation = curves[curves["split"] == "validation"].sort_values("round")
    rewards, values = validation["reward_mean"].tolist(), validation[column].tolist()
    k = first_reaching_evaluation(rewards, target)
    if k is None:
        return math.nan
    return float(values[k] if k == 0 or rewards[k] == target else max(values[k - 1], values[k]))


def select(points: list[dict[str, Any]], divergence: str) -> dict[str, Any]:
    """The selection rule over one method's grid points.

    Each point: ``{"point": k, "settings": {...}, "reached": bool, divergence: value, "interpolated":
    value, "fraction": f}``: ``divergence`` the bound at the level (:func:`divergence_bound_at_level`),
    ``interpolated`` the divergence interpolated to the crossing, which breaks ties between bounds, and
    ``fraction`` the best reward fraction it reached. Returns the chosen point with ``rule`` saying
    why, and for each knob whether its value is interior to the grid or at an edge.
    """
    reached = [p for p in points if p["reached"] and math.isfinite(p.get(divergence, math.nan))]
    if reached:
        chosen = min(reached, key=lambda p: (p[divergence], p["interpolated"]))
        rule = f"lowest {divergence} at the level"
    else:
        chosen, rule = max(points, key=lambda p: p["fraction"]), "no point reached the level: the highest reward"
    edges = {}
    for key, value in chosen["settings"].items():
        values = sorted({p["settings"][key] for p in points})
        if len(values) == 1:
            edges[key] = "not searched"
        elif len(values) == 2:
            edges[key] = f"{'low' if value == values[0] else 'high'} edge of 2 values"
        else:
            edges[key] = "interior" if values[0] < value < values[-1] else ("low edge" if value == values[0] else "high edge")
    return {**chosen, "rule": rule, "edges": edges}


def selected_settings(path: str | Path, reward: str, method: str) -> dict:
    """The settings ``select_settings`` chose for one (reward, method)."""
    selected = yaml.safe_load(Path(path).read_text())
    try:
        return dict(selected["rewards"][reward]["methods"][method]["settings"])
    except KeyError as error:
        raise ValueError(f"{path} holds no selection for reward {reward!r}, method {method!r}: tune it first") from error
