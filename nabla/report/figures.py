"""Figures from a scale's cached results (results/<scale>/), written as PNG and PDF.

Everything here reads only the small committed files — summary.csv, curves.csv and the per-run
metrics JSONs — so figures redraw on a fresh clone without any run folder. Every method has one
colour in every figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from nabla.data.toy2d import GaussianMixture  # noqa: E402
from nabla.report.tables import PRIOR_ROW, method_order  # noqa: E402

PRIOR_STYLE = ("pretrained", "#7f7f7f")  # the prior's label and colour


def method_label(method: str) -> str:
    """The method's name in figures and tables (its registry ``label``; the prior's own)."""
    from nabla.methods import registry

    return PRIOR_STYLE[0] if method == PRIOR_ROW else getattr(registry().get(method), "label", method)


def method_color(method: str) -> str | None:
    """The method's colour in every figure (its registry ``color``; the prior grey)."""
    from nabla.methods import registry

    return PRIOR_STYLE[1] if method == PRIOR_ROW else getattr(registry().get(method), "color", None)


#: the dense-evaluation panels: (curves column, axis label, log scale)
CURVE_PANELS = {
    "toy2d": (
        ("reward_mean", "mean reward", False),
        ("energy_distance_target", "energy distance to p#·exp(βr)", True),
        ("energy_distance_own_target", "energy distance to own target", True),
        ("mass_tv_target", "mode-mass TV to p#·exp(βr)", False),
    ),
    "images": (
        ("reward_mean", "mean reward", False),
        ("diversity", "diversity (mean pairwise distance)", False),
        ("fid_to_prior", "FID to the prior", False),
    ),
}
#: the matched-reward frontiers: reward (x) against these divergences (y) along training
FRONTIER_PANELS = {
    "toy2d": (("energy_distance_target", "energy distance to p#·exp(βr)", True),
              ("energy_distance_prior", "energy distance to the prior", True)),
    "images": (("diversity", "diversity (mean pairwise distance)", False),
               ("fid_to_prior", "FID to the prior", False)),
}


def ordered(methods: Sequence[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(method_order())}
    return sorted(set(methods), key=lambda m: rank.get(m, len(rank)))


def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        # no creation date in PDFs: a redraw of the same results gives the same bytes
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return paths


def _limits(values: pd.Series, log: bool) -> tuple[float, float]:
    """Axis limits that show `values` (finite ones) with a margin."""
    values = values[np.isfinite(values)]
    if log:
        values = values[values > 0]
        return float(values.min()) / 2, float(values.max()) * 2
    low, high = float(values.min()), float(values.max())
    margin = 0.08 * (high - low or 1.0)
    return low - margin, high + margin


def curve_figure(curves: pd.DataFrame, panels, title: str = ""):
    """Mean ± std over seeds of each panel's metric, against trajectories seen (top) and training
    seconds (bottom).

    Axes are scaled to the methods that did not diverge; a method with a diverged run (marked
    in the legend) is drawn as its mean alone, which leaves the axes where it blows up.
    """
    diverged = curves.groupby("method")["diverged"].any() if "diverged" in curves else pd.Series(dtype=bool)
    panels = [p for p in panels if p[0] in curves and curves[p[0]].notna().any()]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for row, x in enumerate(("trajectories", "seconds")):
        for col, (column, label, log) in enumerate(panels):
            ax = axes[row, col]
            shown = []
            for method in ordered(curves["method"]):
                group = curves[curves["method"] == method]
                if group[column].isna().all():
                    continue
                stats = group.groupby("round").agg(
                    mean=(column, "mean"), std=(column, lambda v: v.std(ddof=1)), seconds=("seconds", "mean"),
                    trajectories=("trajectories", "mean"),
                ).fillna({"std": 0.0})
                xs = stats[x]
                color, name = method_color(method), method_label(method)
                if diverged.get(method, False):
                    ax.plot(xs, stats["mean"], color=color, label=f"{name} (diverged)", lw=1.2, ls="--")
                    continue
                ax.plot(xs, stats["mean"], color=color, label=name, lw=1.6)
                ax.fill_between(xs, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=color, alpha=0.18, lw=0)
                shown += [stats["mean"] - stats["std"], stats["mean"] + stats["std"]]
            if log:
                ax.set_yscale("log")
            if shown:
                ax.set_ylim(*_limits(pd.concat(shown), log))
            ax.set_xlabel("trajectories seen" if x == "trajectories" else "training seconds")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def spans_decades(values: pd.Series, linthresh: float) -> bool:
    """Whether |values| span more than a decade, counting from ``linthresh`` (a symlog axis's linear core)."""
    magnitudes = values.abs()
    return bool(magnitudes.max() > 10 * max(magnitudes.min(), linthresh))


def tradeoff_figure(summary: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str = ""):
    """One small point per seed, the seed mean as a large outlined marker, per method.

    Diverged runs (a ``diverged_at`` step) are left out and named under the axes: their values
    are astronomic and would squash every other point into one corner.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    diverged = summary["diverged_at"].notna() if "diverged_at" in summary else pd.Series(False, index=summary.index)
    if diverged.any():
        names = ", ".join(method_label(m) for m in ordered(summary.loc[diverged, "method"]))
        fig.text(0.01, 0.0, f"left out: {int(diverged.sum())} diverged runs ({names})", fontsize=7, va="bottom")
    summary = summary[~diverged]
    for method in ordered(summary["method"]):
        runs = summary[summary["method"] == method]
        color = method_color(method)
        ax.scatter(runs[x], runs[y], color=color, s=14, alpha=0.6)
        ax.scatter(runs[x].mean(), runs[y].mean(), color=color, s=90, edgecolor="black",
                   label=method_label(method))
    # the prior's own distance is ≈ 0 (can be slightly < 0) and diverging runs' are huge: symlog
    # where values span decades; linear where they do not (diversities, rewards of order one)
    if spans_decades(summary[x], 1e-2):
        ax.set_xscale("symlog", linthresh=1e-2)
    if spans_decades(summary[y], 1.0):
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def toy2d_samples_figure(records: Sequence[dict], extent: float = 7.0, title: str = "", per_row: int = 6):
    """One panel per method (``per_row`` a row): samples (dots) over the exact target's density (contours)."""
    n = len(records)
    rows, cols = -(-n // per_row), min(n, per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    grid = np.linspace(-extent, extent, 160)
    xx, yy = np.meshgrid(grid, grid)
    points = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=torch.float64)
    for ax, record in zip(axes.flat, records):
        target = GaussianMixture.from_dict(record["target"])
        density = target.log_prob(points).exp().reshape(xx.shape).numpy()
        ax.contourf(xx, yy, density, levels=12, cmap="Greys")
        samples = np.asarray(record["samples"])
        inside = np.abs(samples).max(axis=1) <= extent
        ax.scatter(samples[inside, 0], samples[inside, 1], s=2, color=method_color(record["method"]), alpha=0.8)
        name = method_label(record["method"])
        outside = int((~inside).sum())
        ax.set_title(name + (f"\n({outside} of {len(samples)} off the panel)" if outside else ""), fontsize=9)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(h_pad=2.0)
    return fig


def image_samples_figure(records: Sequence[dict], title: str = ""):
    """One row per method: its evaluation images of the same prompts and seeds (the same noise)."""
    from nabla.report.grids import from_png_base64, image_grid

    prompts = records[0]["sample_strip_prompts"]
    tiles = torch.cat([from_png_base64(r["sample_strip"], len(prompts)) for r in records])
    # Row labels drawn by matplotlib: PIL's default font has no "∇".
    grid = image_grid(tiles, [""] * len(records), upscale=2, label_width=2)
    fig, ax = plt.subplots(figsize=(grid.width / 100 + 1.3, grid.height / 100 + 0.6))
    ax.imshow(np.asarray(grid))
    for row, record in enumerate(records):
        y = (row + 0.5) * grid.height / len(records)
        ax.text(-6, y, method_label(record["method"]), ha="right", va="center", fontsize=8,
                color=(method_color(record["method"]) or "black"))
    ax.set_axis_off()
    columns = " | ".join(dict.fromkeys(prompts))
    ax.set_title(f"{title}\ncolumns: {columns} (seeds 0–{prompts.count(prompts[0]) - 1} each)", fontsize=8)
    fig.tight_layout()
    return fig


def frontier_figure(curves: pd.DataFrame, panels, levels: dict | None = None, title: str = ""):
    """The trade-off along training: mean reward (x) against each divergence (y), one line per
    method through its seed-mean evaluations (a marker at the end), the matched-reward levels as
    vertical lines. Where the levels give the prior's and the reference's reward, the axes show
    that range (with a tenth of it either side; at the image scales up to the furthest method's
    reach, :func:`_reward_window`): a method that runs past it (a diverging one) is cut at the
    edge and says so in the legend."""
    panels = [p for p in panels if p[0] in curves and curves[p[0]].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    window = _reward_window(levels)
    for ax, (column, label, log) in zip(axes[0], panels):
        shown = []
        for method in ordered(curves["method"]):
            stats = curves[curves["method"] == method].groupby("round")[["reward_mean", column]].mean()
            stats = stats[np.isfinite(stats).all(axis=1)]
            if stats.empty:
                continue
            name = method_label(method)
            if window is not None:
                inside = stats["reward_mean"].between(*window)
                shown.append(stats.loc[inside, column])
                if (stats["reward_mean"] > window[1]).any():
                    name += " (runs past the range)"
            color = method_color(method)
            ax.plot(stats["reward_mean"], stats[column], color=color, lw=1.5, label=name)
            ax.scatter(stats["reward_mean"].iloc[-1:], stats[column].iloc[-1:], color=color, s=40, edgecolor="black", zorder=3)
        for i, (fraction, value) in enumerate(((levels or {}).get("levels") or {}).items()):
            ax.axvline(value, color="black", lw=0.8, ls=":")
            # one line of text a level: close levels' labels would print over each other
            ax.text(value, 1.0 - 0.04 * i, f" {float(fraction):.0%}", transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top")
        if log:
            ax.set_yscale("log")
        if window is not None:
            ax.set_xlim(*window)
            values = pd.concat(shown) if shown else pd.Series(dtype=float)
            values = values[values > 0] if log else values
            if not values.empty:
                low, high = values.min(), values.max()
                ax.set_ylim(*((low / 1.5, high * 1.5) if log else (low - 0.05 * (high - low + 1e-12), high + 0.05 * (high - low + 1e-12))))
        ax.set_xlabel("mean reward")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _reward_window(levels: dict | None) -> tuple[float, float] | None:
    """The prior's mean reward to the highest of the reference's and every method's reach (image
    scales, where the reference is the majority's reach and rewards are bounded), a tenth of that
    span either side (None where the levels do not give both ends)."""
    low, high = (levels or {}).get("prior_reward"), (levels or {}).get("reference_reward")
    if high is not None and (levels or {}).get("method_reaches"):
        high = max(high, *levels["method_reaches"].values())
    if low is None or high is None or not np.isfinite([low, high]).all() or high <= low:
        return None
    pad = 0.1 * (high - low)
    return low - pad, high + pad


def figures(results: str | Path, scale: str, rewards: Sequence[str] | None = None) -> list[Path]:
    """Every figure of one protocol's results folder (summary.csv, curves.csv, levels.json and,
    where the runs were evaluated at the end, samples.json), for every reward there or ``rewards``:
    curves, frontier, end-of-budget trade-off and samples (PNG and PDF under figures/)."""
    results = Path(results)
    summary = pd.read_csv(results / "summary.csv")
    curves = pd.read_csv(results / "curves.csv")
    levels = json.loads((results / "levels.json").read_text())
    samples = json.loads((results / "samples.json").read_text()) if (results / "samples.json").exists() else {}
    group = "toy2d" if scale == "toy2d" else "images"
    split = "evaluation" if (curves["split"] == "evaluation").any() else "validation"
    written: list[Path] = []
    figures_dir = results / "figures"
    for reward in rewards or sorted(curves["reward"].unique()):
        if reward not in set(curves["reward"]):
            raise ValueError(f"{results / 'curves.csv'} holds no run of reward '{reward}'")
        title = f"{scale} ({results.name}), reward {reward}, {split} split"
        runs = curves[(curves["reward"] == reward) & (curves["split"] == split)]
        written += save(curve_figure(runs, CURVE_PANELS[group], title), figures_dir / f"curves_{reward}")
        # the levels are reward values of the validation split (where the crossings are located):
        # the frontier is drawn on that split, the scale its levels are in
        level_split = "validation" if (curves["split"] == "validation").any() else split
        written += save(frontier_figure(curves[(curves["reward"] == reward) & (curves["split"] == level_split)],
                                        FRONTIER_PANELS[group], levels.get(reward),
                                        f"{scale} ({results.name}), reward {reward}, {level_split} split"),
                        figures_dir / f"frontier_{reward}")
        finished = summary[(summary["reward"] == reward)]
        if reward in samples:
            x, xlabel = (("energy_distance_prior", "energy distance to the prior (toy analogue of FID-to-prior)")
                         if scale == "toy2d" else ("fid_to_prior", "FID to the prior"))
            written += save(tradeoff_figure(finished, x, "reward_mean", xlabel, "mean reward", f"{title}, end of budget"),
                            figures_dir / f"tradeoff_{reward}")
            draw = toy2d_samples_figure if scale == "toy2d" else image_samples_figure
            written += save(draw(samples[reward], title=f"{title}; run seed 0"), figures_dir / f"samples_{reward}")
    return written


def figure_names(scale: str, rewards: Sequence[str], evaluated: bool = True) -> list[str]:
    """The files ``figures`` writes (for the workflow's outputs), relative to the results folder."""
    kinds = ("curves", "frontier", "tradeoff", "samples") if evaluated else ("curves", "frontier")
    return [f"figures/{k}_{r}.{e}" for k in kinds for r in rewards for e in ("png", "pdf")]
