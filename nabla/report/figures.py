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
from nabla.report.tables import METHOD_ORDER  # noqa: E402

METHOD_COLORS = {
    "pretrained": "#7f7f7f",
    "residual_nabla_db": "#d62728",
    "nabla_db": "#ff9896",
    "db_gflownet": "#9467bd",
    "ddpo": "#1f77b4",
    "draft": "#2ca02c",
    "draft_lv": "#98df8a",
    "refl": "#ff7f0e",
}
METHOD_LABELS = {
    "pretrained": "pretrained",
    "residual_nabla_db": "residual ∇-DB",
    "nabla_db": "∇-DB",
    "db_gflownet": "DB-GFlowNet",
    "ddpo": "DDPO",
    "draft": "DRaFT-1",
    "draft_lv": "DRaFT-LV",
    "refl": "ReFL",
}

#: toy2d curves: (eval_log column, axis label, log scale)
TOY2D_CURVES = (
    ("energy_distance_target", "energy distance to exact target", True),
    ("mass_tv_target", "mode-mass TV to exact target", False),
    ("eval_reward_mean", "mean reward", False),
)


def ordered(methods: Sequence[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
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


def curve_figure(curves: pd.DataFrame, panels=TOY2D_CURVES, title: str = ""):
    """Mean ± std over seeds of each panel's metric, against update (top) and seconds (bottom).

    Axes are scaled to the methods that did not diverge; a method with a diverged run (marked
    in the legend) is drawn as its mean alone, which leaves the axes where it blows up.
    """
    diverged = curves.groupby("method")["diverged"].any() if "diverged" in curves else pd.Series(dtype=bool)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for row, x in enumerate(("step", "seconds")):
        for col, (column, label, log) in enumerate(panels):
            ax = axes[row, col]
            shown = []
            for method in ordered(curves["method"]):
                group = curves[curves["method"] == method]
                stats = group.groupby("step").agg(
                    mean=(column, "mean"), std=(column, lambda v: v.std(ddof=0)), seconds=("seconds", "mean")
                )
                xs = stats.index if x == "step" else stats["seconds"]
                color, name = METHOD_COLORS.get(method), METHOD_LABELS.get(method, method)
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
            ax.set_xlabel("update" if x == "step" else "training seconds")
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
        names = ", ".join(METHOD_LABELS.get(m, m) for m in ordered(summary.loc[diverged, "method"]))
        fig.text(0.01, 0.0, f"left out: {int(diverged.sum())} diverged runs ({names})", fontsize=7, va="bottom")
    summary = summary[~diverged]
    for method in ordered(summary["method"]):
        runs = summary[summary["method"] == method]
        color = METHOD_COLORS.get(method)
        ax.scatter(runs[x], runs[y], color=color, s=14, alpha=0.6)
        ax.scatter(runs[x].mean(), runs[y].mean(), color=color, s=90, edgecolor="black",
                   label=METHOD_LABELS.get(method, method))
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


def toy2d_samples_figure(records: Sequence[dict], extent: float = 7.0, title: str = ""):
    """One panel per method: samples (dots) over the exact target's density (contours)."""
    n = len(records)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    grid = np.linspace(-extent, extent, 160)
    xx, yy = np.meshgrid(grid, grid)
    points = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=torch.float64)
    for ax, record in zip(axes[0], records):
        target = GaussianMixture.from_dict(record["target"])
        density = target.log_prob(points).exp().reshape(xx.shape).numpy()
        ax.contourf(xx, yy, density, levels=12, cmap="Greys")
        samples = np.asarray(record["samples"])
        inside = np.abs(samples).max(axis=1) <= extent
        ax.scatter(samples[inside, 0], samples[inside, 1], s=2, color=METHOD_COLORS.get(record["method"]), alpha=0.8)
        name = METHOD_LABELS.get(record["method"], record["method"])
        outside = int((~inside).sum())
        ax.set_title(name + (f"\n({outside} of {len(samples)} off the panel)" if outside else ""), fontsize=9)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def seed_records(results: Path, methods: Sequence[str], reward: str, seed: int) -> list[dict]:
    """The metrics JSONs of one seed's runs (and the prior's row), in the methods' fixed order."""
    paths = [results / "metrics" / reward / method / f"seed{seed}.json" for method in ordered(methods)]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


def toy2d_figures(results: str | Path, seed: int = 0) -> list[Path]:
    """Every toy2d figure from results/toy2d/{summary.csv, curves.csv, metrics/}."""
    results = Path(results)
    summary = pd.read_csv(results / "summary.csv")
    curves = pd.read_csv(results / "curves.csv")
    written: list[Path] = []
    for reward in summary["reward"].unique():
        beta = summary.loc[summary["reward"] == reward, "beta"].iloc[0]
        target = f"exact target p#·exp({beta:g}·r), reward {reward}"
        figures = results / "figures"
        written += save(curve_figure(curves[curves["reward"] == reward], title=target), figures / f"curves_{reward}")
        written += save(
            tradeoff_figure(summary[summary["reward"] == reward], "energy_distance_prior", "reward_mean",
                            "energy distance to the prior (toy analogue of FID-to-prior)", "mean reward", target),
            figures / f"tradeoff_{reward}",
        )
        records = seed_records(results, summary.loc[summary["reward"] == reward, "method"], reward, seed)
        written += save(toy2d_samples_figure(records, title=f"{target}; seed {seed}"), figures / f"samples_{reward}")
    return written


#: image scales' curves: only the reward is evaluated during training (diversity and FID at the end)
IMAGE_CURVES = (("eval_reward_mean", "mean held-out reward", False),)


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
        ax.text(-6, y, METHOD_LABELS.get(record["method"], record["method"]), ha="right", va="center", fontsize=8,
                color=METHOD_COLORS.get(record["method"], "black"))
    ax.set_axis_off()
    columns = " | ".join(dict.fromkeys(prompts))
    ax.set_title(f"{title}\ncolumns: {columns} (seeds 0–{prompts.count(prompts[0]) - 1} each)", fontsize=8)
    fig.tight_layout()
    return fig


def image_figures(results: str | Path, scale: str, seed: int = 0, rewards: Sequence[str] | None = None) -> list[Path]:
    """The figures of an image scale from results/<scale>/{summary.csv, curves.csv, metrics/}, for
    every reward there or those in ``rewards``."""
    results = Path(results)
    summary = pd.read_csv(results / "summary.csv")
    curves = pd.read_csv(results / "curves.csv")
    written: list[Path] = []
    figures = results / "figures"
    for reward in rewards or summary["reward"].unique():
        if reward not in set(summary["reward"]):
            raise ValueError(f"{results / 'summary.csv'} holds no run of reward '{reward}'")
        rows = summary[summary["reward"] == reward]
        title = f"{scale}, reward {reward}, held-out prompts"
        written += save(curve_figure(curves[curves["reward"] == reward], IMAGE_CURVES, title), figures / f"curves_{reward}")
        for column, label in (("diversity", "diversity (mean pairwise distance)"), ("fid_to_prior", "FID to the prior")):
            fig = tradeoff_figure(rows, column, "reward_mean", label, "mean reward", title)
            written += save(fig, figures / f"tradeoff_{column}_{reward}")
        records = seed_records(results, rows["method"], reward, seed)
        written += save(image_samples_figure(records, f"{title}; run seed {seed}"), figures / f"samples_{reward}")
    return written
