"""Figures from a scale's cached results (results/<scale>/), written as PNG and PDF.

Everything here reads only the small committed files — summary.csv, curves.csv, levels.json and
samples.json — so figures redraw on a fresh clone without any run folder, and byte for byte: the
same results give the same files (no dates or versions in them, one font shipped with matplotlib,
matplotlib's default style whatever the local matplotlibrc says, no set or hash order in any text).

Every method has one style in every figure (:func:`method_styles`): its class's colour, and a dash
and a marker by its place in the registry, so that two methods never look alike even where their
lines lie on top of each other or their colours are close.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from nabla.data.toy2d import GaussianMixture  # noqa: E402
from nabla.report.tables import PRIOR_ROW, REFERENCE, method_order  # noqa: E402

PRIOR_STYLE = ("pretrained", "#7f7f7f")  # the prior's label and colour
#: dashes and markers handed out in registry order; 4 and 11 are coprime, so no two of the first
#: 44 methods share both (and none shares its colour with another: :func:`method_styles`)
DASHES = ("solid", (0, (5, 1.6)), (0, (1, 1.3)), (0, (7, 1.6, 1.2, 1.6)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p")
#: colours for a method whose class gives none, or one an earlier method already has
SPARE_COLORS = ("#637939", "#843c39", "#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf",
                "#e7969c", "#9c9ede", "#cedb9c", "#de9ed6")
#: matplotlib's own defaults (not the local matplotlibrc) and a font shipped with matplotlib
STYLE = {"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "mathtext.fontset": "dejavusans",
         "svg.hashsalt": "nabla", "path.simplify": True}
#: no date, version or host in a written file: a redraw of the same results gives the same bytes
METADATA = {".png": {"Software": None},
            ".pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}}


@contextlib.contextmanager
def stable_style():
    """matplotlib's default style with the fixed font, whatever the local configuration."""
    with plt.style.context(["default", STYLE]):
        yield


def stable(draw):
    """Run a figure function inside :func:`stable_style` (text is laid out with the font it sets)."""

    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with stable_style():
            return draw(*args, **kwargs)

    return wrapped


@functools.cache
def method_styles() -> dict[str, dict]:
    """Every method's style in every figure, keyed by name (:func:`styles_for` the registry)."""
    from nabla.methods import registry

    return styles_for(registry())


def styles_for(methods: dict[str, type]) -> dict[str, dict]:
    """The styles of ``methods`` (name → class, in the report's order), the prior first.

    ``color`` is the method class's (a spare one where it has none or repeats an earlier method's
    or the prior's grey), ``linestyle`` and ``marker`` go round :data:`DASHES` and :data:`MARKERS`
    in that order, so that neighbours (a method and its variant: residual ∇-DB and ∇-DB, DRaFT-1
    and DRaFT-LV) differ in all three, and no two methods share a colour."""
    styles = {PRIOR_ROW: {"color": PRIOR_STYLE[1], "linestyle": "solid", "marker": "*"}}
    # past the spares, colours round the hue circle (matplotlib's HSV), never one already used
    used, spare = {PRIOR_STYLE[1]}, itertools.chain(SPARE_COLORS, (
        matplotlib.colors.to_hex(matplotlib.colors.hsv_to_rgb((k * 0.618034 % 1.0, 0.75, 0.7))) for k in itertools.count()))
    for index, (name, cls) in enumerate(methods.items()):
        color = (getattr(cls, "color", None) or "").lower()
        while not color or color in used:
            color = next(spare)
        used.add(color)
        styles[name] = {"color": color, "linestyle": DASHES[index % len(DASHES)],
                        "marker": MARKERS[index % len(MARKERS)]}
    return styles


def method_style(method: str) -> dict:
    """One method's colour, dash and marker (a method outside the registry: black, solid, ×)."""
    return method_styles().get(method, {"color": "#000000", "linestyle": "solid", "marker": "x"})


def method_label(method: str) -> str:
    """The method's name in figures and tables (its registry ``label``; the prior's own)."""
    from nabla.methods import registry

    return PRIOR_STYLE[0] if method == PRIOR_ROW else getattr(registry().get(method), "label", method)


def method_color(method: str) -> str:
    """The method's colour in every figure (:func:`method_styles`)."""
    return method_style(method)["color"]


def number(value: float) -> str:
    """A value in a figure's text: three significant digits, a true minus sign."""
    return f"{value:.3g}".replace("-", "−")


#: the dense-evaluation panels: (curves column, axis label, axis scale: False/"linear", True/"log", "symlog")
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
#: the matched-reward frontiers: reward (x) against these divergences (y) along training. The
#: energy distance to the prior starts at ≈ 0 (its estimate can be < 0): symlog, linear below 1e-3.
FRONTIER_PANELS = {
    "toy2d": (("energy_distance_target", "energy distance to p#·exp(βr)", True),
              ("energy_distance_prior", "energy distance to the prior", "symlog")),
    "images": (("diversity", "diversity (mean pairwise distance)", False),
               ("fid_to_prior", "FID to the prior", False)),
}
SYMLOG_THRESHOLD = 1e-3
#: a curve axis leaves out a method's excursion past the other methods' means by more than this
#: many times their span (it would squash them into a strip); bands may widen it by BAND_ROOM
OUTLIER = 1.0
BAND_ROOM = 0.25


def axis_scale(spec) -> str:
    """A panel's scale: "linear", "log" or "symlog" (a bool: log or not)."""
    return spec if isinstance(spec, str) else ("log" if spec else "linear")


def ordered(methods: Sequence[str]) -> list[str]:
    """The methods present, in the report's order (others after them, by name)."""
    rank = {m: i for i, m in enumerate(method_order())}
    return sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), str(m)))


def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    with stable_style():
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight", metadata=METADATA[path.suffix])
    plt.close(fig)
    return paths


def method_handle(method: str, label: str | None = None, **overrides) -> Line2D:
    """A legend entry showing the method's line and marker."""
    style = {"lw": 1.6, "markersize": 5, **method_style(method), **overrides}
    return Line2D([], [], label=label or method_label(method), **style)


def outside_legend(fig, handles: list, title: str | None = None) -> None:
    """One legend for the whole figure, right of its panels (never over a line)."""
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize=8, frameon=False,
                   title=title, title_fontsize=8, alignment="left")


def footnote(fig, lines: Sequence[str], width_inches: float) -> None:
    """Notes under the panels, wrapped to the figure's width."""
    lines = [line for line in lines if line]
    if lines:
        chars = max(60, int(width_inches * 72 / (7 * 0.52)))
        text = "\n".join(textwrap.fill(line, chars) for line in lines)
        fig.text(0.01, 0.0, text, fontsize=7, va="top", ha="left", color="#333333")


def markevery(points: int, index: int) -> tuple[int, int]:
    """About six markers a line, staggered by the method's place so that lines on top of each other
    show each one's markers."""
    step = max(1, math.ceil(points / 6))
    return (index % step, step)


def robust_limits(means: dict[str, np.ndarray], bands: Sequence[np.ndarray], scale: str,
                  tame: Sequence[str] | None = None) -> tuple[tuple[float, float] | None, dict[str, list]]:
    """Axis limits for curves whose means are ``means`` (per method), and the methods they clip.

    The limits hold the ``tame`` methods' means (on log axes, their logarithms), except a method's
    excursion beyond all the others' by more than :data:`OUTLIER` times their span: one method
    whose mean dips by orders of magnitude no longer flattens every other line. Bands (``bands``)
    widen the limits by at most :data:`BAND_ROOM` of that span. Returns the limits (None: nothing
    to show) and, per method whose mean leaves them, [("below"/"above", its extreme mean), ...]."""
    log = scale == "log"

    def forward(values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        return np.log10(values[values > 0]) if log else values

    shown = {m: forward(v) for m, v in means.items()}
    shown = {m: v for m, v in shown.items() if v.size}
    core = {m: v for m, v in shown.items() if tame is None or m in tame} or shown
    if not core:
        return None, {}
    low_of = {m: float(v.min()) for m, v in core.items()}
    high_of = {m: float(v.max()) for m, v in core.items()}
    lows, highs = dict(low_of), dict(high_of)
    # the lowest (highest) method is an outlier where it runs further past the rest than their span
    for extremes, sign in ((lows, -1.0), (highs, 1.0)):
        while len(extremes) > 1:
            method = max(extremes, key=lambda m: (sign * extremes[m], m))
            rest = [m for m in core if m != method and m in lows and m in highs]
            if not rest:
                break
            span = max(highs[m] for m in rest) - min(lows[m] for m in rest)
            edge = max(highs[m] for m in rest) if sign > 0 else min(lows[m] for m in rest)
            if span <= 0 or sign * (extremes[method] - edge) <= OUTLIER * span:
                break
            del extremes[method]
    low, high = min(lows.values()), max(highs.values())
    span = high - low
    room = BAND_ROOM * span if span > 0 else (0.5 if log else 0.1 * (abs(high) or 1.0))
    band = np.concatenate([forward(b) for b in bands] or [np.array([])])
    if band.size:
        low, high = max(min(low, float(band.min())), low - room), min(max(high, float(band.max())), high + room)
    pad = 0.04 * (high - low) if high > low else room
    low, high = low - pad, high + pad
    clipped = {}
    for method, values in shown.items():
        sides = [(side, float(10 ** extreme if log else extreme)) for side, extreme, off in (
            ("below", values.min(), values.min() < low), ("above", values.max(), values.max() > high)) if off]
        if sides:
            clipped[method] = sides
    limits = (10 ** low, 10 ** high) if log else (low, high)
    return (float(limits[0]), float(limits[1])), clipped


def clipping_note(ax, clipped: dict[str, list], limits: tuple[float, float]) -> None:
    """Name in the panel each method whose mean runs off it, and how far."""
    for side, y, va in (("below", 0.02, "bottom"), ("above", 0.98, "top")):
        names = [f"{method_label(m)} {side} {number(limits[0] if side == 'below' else limits[1])} clipped "
                 f"(reaches {number(extreme)})" for m, sides in clipped.items() for s, extreme in sides if s == side]
        if names:
            ax.text(0.02, y, "\n".join(names), transform=ax.transAxes, fontsize=6.5, va=va, ha="left",
                    color="#b00000", bbox={"facecolor": "white", "edgecolor": "#b00000", "lw": 0.6, "alpha": 0.9})


def seeds_phrase(frame: pd.DataFrame) -> str:
    """How many seeds each method's lines average: '3 seeds' or '1–3 seeds'."""
    key = "run" if "run" in frame else "seed"
    counts = sorted(frame.groupby("method")[key].nunique().unique()) if key in frame and len(frame) else [1]
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{n} seed{'s' if counts[-1] != 1 else ''}"


@stable
def curve_figure(curves: pd.DataFrame, panels, title: str = "", notes: Sequence[str] = ()):
    """Mean over seeds of each panel's metric, against trajectories seen (top) and training seconds
    (bottom), shaded ± one std over seeds (on log axes the seeds' min to max: a band whose lower edge
    is ≤ 0 cannot be drawn there).

    Each panel's axis stops at robust limits (:func:`robust_limits`): a method whose mean runs past
    them is named in the panel. A method with a diverged run (marked in the legend) is drawn as
    its mean alone, and its values do not set the limits.
    """
    diverged = curves.groupby("method")["diverged"].any() if "diverged" in curves else pd.Series(dtype=bool)
    panels = [p for p in panels if p[0] in curves and curves[p[0]].notna().any()]
    methods = ordered(curves["method"])
    index = {m: i for i, m in enumerate(method_order())}
    width = 4.2 * len(panels)
    fig, axes = plt.subplots(2, len(panels), figsize=(width, 7), squeeze=False)
    clipped_any = False
    for col, (column, label, spec) in enumerate(panels):
        scale = axis_scale(spec)
        stats = {}
        for method in methods:
            group = curves[curves["method"] == method]
            if group[column].isna().all():
                continue
            stats[method] = group.groupby("round").agg(
                mean=(column, "mean"), std=(column, lambda v: v.std(ddof=1)), low=(column, "min"), high=(column, "max"),
                seconds=("seconds", "mean"), trajectories=("trajectories", "mean"),
            ).fillna({"std": 0.0})
        bands = {}
        for method, s in stats.items():
            if diverged.get(method, False):
                continue
            bands[method] = (s["low"], s["high"]) if scale == "log" else (s["mean"] - s["std"], s["mean"] + s["std"])
        tame = [m for m in stats if not diverged.get(m, False)]
        limits, clipped = robust_limits({m: s["mean"].to_numpy() for m, s in stats.items()},
                                        [np.concatenate([lo, hi]) for lo, hi in bands.values()], scale, tame)
        clipped_any |= bool(clipped)
        for row, x in enumerate(("trajectories", "seconds")):
            ax = axes[row, col]
            for method, s in stats.items():
                style = method_style(method)
                ax.plot(s[x], s["mean"], lw=1.6, markersize=4, markevery=markevery(len(s), index.get(method, 0)),
                        label=method_label(method), **style)
                if method in bands:
                    lo, hi = bands[method]
                    if scale == "log" and limits is not None:
                        lo = lo.clip(lower=limits[0])  # a seed at ≤ 0: the band runs to the axis
                    ax.fill_between(s[x], lo, hi, color=style["color"], alpha=0.15, lw=0)
            if scale != "linear":
                ax.set_yscale(scale, **({"linthresh": SYMLOG_THRESHOLD} if scale == "symlog" else {}))
            if limits is not None:
                ax.set_ylim(*limits)
                clipping_note(ax, clipped, limits)
            ax.set_xlabel("trajectories seen" if x == "trajectories" else "training seconds")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    outside_legend(fig, [method_handle(m, method_label(m) + (" (diverged)" if diverged.get(m, False) else ""))
                         for m in methods])
    fig.suptitle(title)
    fig.tight_layout()
    bands = "shaded: ± one std over seeds" + (" (log axes: the seeds' min to max)"
                                               if any(axis_scale(p[2]) == "log" for p in panels) else "")
    lines = [f"Lines: the mean over {seeds_phrase(curves)} per method; {bands}."
             if seeds_phrase(curves) != "1 seed" else "Lines: one run per method (one seed: no band)."]
    if diverged.any():
        lines.append("A method with a diverged run is drawn as its mean alone and does not set the axes.")
    if clipped_any:
        lines.append("Axes stop where one method's mean would flatten every other line (named in red in the "
                     "panel, with how far it runs).")
    footnote(fig, lines + list(notes), width)
    return fig


def spans_decades(values: pd.Series, linthresh: float, decades: float = 1.0) -> bool:
    """Whether |values| span more than ``decades`` decades, counting from ``linthresh`` (a symlog
    axis's linear core)."""
    magnitudes = values.abs()
    return bool(magnitudes.max() > 10 ** decades * max(magnitudes.min(), linthresh))


@stable
def tradeoff_figure(summary: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str = "",
                    reference: tuple[str, float] | None = None):
    """One small marker per seed, the seed mean as a large outlined marker, per method (a
    ``reference`` value of y, named, as a horizontal line).

    Diverged runs (a ``diverged_at`` step) are left out and named under the axes: their values
    are astronomic and would squash every other point into one corner.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    diverged = summary["diverged_at"].notna() if "diverged_at" in summary else pd.Series(False, index=summary.index)
    notes = []
    if diverged.any():
        names = ", ".join(method_label(m) for m in ordered(summary.loc[diverged, "method"]))
        notes.append(f"Left out: {int(diverged.sum())} diverged runs ({names}).")
    summary = summary[~diverged]
    handles = []
    for method in ordered(summary["method"]):
        runs = summary[summary["method"] == method]
        style = method_style(method)
        ax.scatter(runs[x], runs[y], color=style["color"], marker=style["marker"], s=16, alpha=0.55, lw=0)
        ax.scatter(runs[x].mean(), runs[y].mean(), color=style["color"], marker=style["marker"], s=95,
                   edgecolor="black", lw=0.8, zorder=3, label=method_label(method))
        handles.append(method_handle(method, linestyle="none", markeredgecolor="black", markersize=7))
    if reference is not None:
        ax.axhline(reference[1], color="black", lw=0.8, ls=(0, (4, 2)))
        ax.text(0.01, reference[1], f"{reference[0]} ({number(reference[1])})", transform=blended_transform_factory(
            ax.transAxes, ax.transData), ha="left", va="bottom", fontsize=7)
    # distances spanning decades: log, or where one is ≤ 0 (the prior's own FID is 0, an energy
    # distance's estimate can be < 0) symlog, linear up to the smallest positive one's decade;
    # rewards linear unless they span two decades
    values = summary[x][np.isfinite(summary[x])]
    positive = values[values > 0]
    if len(positive) and positive.max() > 10 * positive.min():
        if (values <= 0).any():
            linthresh = 10 ** math.floor(math.log10(positive.min()))
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_xlim(min(values.min(), 0.0) - 0.5 * linthresh, positive.max() * 1.6)
        else:
            ax.set_xscale("log")
            ax.set_xlim(positive.min() / 1.6, positive.max() * 1.6)
    if spans_decades(summary[y], 1.0, decades=2.0):
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    outside_legend(fig, handles)
    fig.tight_layout()
    footnote(fig, [f"Small markers: one run each ({seeds_phrase(summary[summary['method'] != PRIOR_ROW])} a "
                   "method); large, outlined: their mean."] + notes, 5.5)
    return fig


@stable
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
        color = method_color(record["method"])
        ax.scatter(samples[inside, 0], samples[inside, 1], s=2, color=color, alpha=0.8)
        name = method_label(record["method"])
        outside = int((~inside).sum())
        ax.set_title(name + (f"\n({outside} of {len(samples)} off the panel)" if outside else ""), fontsize=9)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(h_pad=3.0)
    same = len({json.dumps(r["target"], sort_keys=True) for r in records}) == 1
    footnote(fig, ["Dots: the run's samples; grey: the density of the exact tilted target p#(x)·exp(βr(x))"
                   + (", the same in every panel." if same else ", each panel's own.")], 2.6 * cols)
    return fig


@stable
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
                color=method_color(record["method"]))
    # each prompt's name over its columns (seeds 0..k-1 of it), a thin rule between prompts
    column = tiles.shape[-1] * 2 + 2  # image_grid's upscaled tile and its 2-pixel pad, after a 2-pixel label
    for prompt in dict.fromkeys(prompts):
        first, count = prompts.index(prompt), prompts.count(prompt)
        ax.text(2 + (first + count / 2) * column - 1, -4, prompt, ha="center", va="bottom", fontsize=8)
        if first:
            ax.axvline(2 + first * column - 1.5, color="#444444", lw=1.2)
    ax.set_axis_off()
    seeds = prompts.count(prompts[0])
    ax.set_title(f"{title}\neach row: the same prompts and initial noise (seeds 0–{seeds - 1} of each prompt)\n",
                 fontsize=8)
    fig.tight_layout()
    return fig


def level_lines(ax, levels: dict | None, reference_name: str) -> None:
    """The prior's reward, the reference's and the matched-reward levels as vertical lines, each
    named along its line."""
    levels = levels or {}
    top = blended_transform_factory(ax.transData, ax.transAxes)
    marks = []
    if levels.get("prior_reward") is not None:
        marks.append((levels["prior_reward"], "prior", "#7f7f7f", (0, (4, 2)), 1.0))
    if levels.get("reference_reward") is not None:
        marks.append((levels["reference_reward"], reference_name, "black", "solid", 0.9))
    for fraction, value in sorted((levels.get("levels") or {}).items(), key=lambda item: float(item[0])):
        marks.append((value, f"{float(fraction):.0%} level", "black", (0, (1, 1.5)), 0.9))
    for value, name, color, dash, lw in marks:
        ax.axvline(value, color=color, lw=lw, ls=dash, zorder=1)
        ax.text(value, 0.985, f" {name}", transform=top, rotation=90, fontsize=6.5, va="top", ha="right",
                color=color, zorder=4, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})


def levels_note(levels: dict | None, reference_name: str, reference_text: str) -> str:
    """What the frontier's vertical lines are, with their values."""
    levels = levels or {}
    if levels.get("prior_reward") is None or levels.get("reference_reward") is None:
        return ""
    fractions = sorted((levels.get("levels") or {}).items(), key=lambda item: float(item[0]))
    named = " and ".join(f"{float(f):.0%}" for f, _ in fractions)
    values = ", ".join(number(v) for _, v in fractions)
    text = (f"Vertical lines: the prior's mean reward ({number(levels['prior_reward'])}); the {reference_name}'s "
            f"({number(levels['reference_reward'])}): {reference_text}")
    if fractions:
        text += (f"; the matched-reward levels, {named} of the way from the prior's reward to the {reference_name}'s "
                 f"({values}), where the matched-reward table compares the methods")
    return text + "."


@stable
def frontier_figure(curves: pd.DataFrame, panels, levels: dict | None = None, title: str = "",
                    reference: tuple[str, str] = ("target", REFERENCE["toy2d"]), notes: Sequence[str] = ()):
    """The trade-off along training: mean reward (x) against each divergence (y), one line per
    method through its seed-mean evaluations (an outlined marker at the end); the prior's reward,
    the reference's (``reference``: its name and what it is) and the matched-reward levels as
    named vertical lines. Where the levels give the prior's and the reference's reward, the axes
    show that range (with a tenth of it either side; at the image scales up to the furthest
    method's reach, :func:`_reward_window`): a method that runs past it (a diverging one) is cut
    at the edge and says so in the legend."""
    panels = [p for p in panels if p[0] in curves and curves[p[0]].notna().any()]
    width = 5.2 * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.2), squeeze=False)
    window = _reward_window(levels)
    index = {m: i for i, m in enumerate(method_order())}
    labels = {}
    for ax, (column, label, spec) in zip(axes[0], panels):
        scale = axis_scale(spec)
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
            labels.setdefault(method, name)
            style = method_style(method)
            ax.plot(stats["reward_mean"], stats[column], lw=1.5, markersize=3.5,
                    markevery=markevery(len(stats), index.get(method, 0)), label=name, **style)
            ax.scatter(stats["reward_mean"].iloc[-1:], stats[column].iloc[-1:], color=style["color"],
                       marker=style["marker"], s=45, edgecolor="black", lw=0.8, zorder=3)
        level_lines(ax, levels, reference[0])
        if scale != "linear":
            ax.set_yscale(scale, **({"linthresh": SYMLOG_THRESHOLD} if scale == "symlog" else {}))
        if window is not None:
            ax.set_xlim(*window)
            values = pd.concat(shown) if shown else pd.Series(dtype=float)
            values = values[values > 0] if scale == "log" else values
            if not values.empty:
                low, high = values.min(), values.max()
                if scale == "log":
                    ax.set_ylim(low / 1.5, high * 1.5)
                elif scale == "symlog":
                    ax.set_ylim(min(low, 0.0) - SYMLOG_THRESHOLD, high * 1.5)
                else:
                    margin = 0.05 * (high - low + 1e-12)
                    ax.set_ylim(low - margin, high + margin)
        ax.set_xlabel("mean reward")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    outside_legend(fig, [method_handle(m, name) for m, name in labels.items()])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    lines = [f"Lines: each method's mean over {seeds_phrase(curves)} at each evaluation during training, "
             "from the prior (left) to the end of its budget (outlined marker).",
             levels_note(levels, reference[0], reference[1])]
    if any(axis_scale(p[2]) == "symlog" for p in panels):
        lines.append(f"Symlog axes are linear below {number(SYMLOG_THRESHOLD)} (the estimate of a distance ≈ 0 "
                     "can be slightly negative).")
    footnote(fig, lines + list(notes), width)
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


def split_note(curves: pd.DataFrame, column: str, shown: str) -> str:
    """Where a metric's level depends on the prompt split (image diversity): that the splits differ,
    with the prior's value on each (its round-0 evaluations), so that no one compares across them."""
    if column not in curves or curves["split"].nunique() < 2:
        return ""
    prior = curves[curves["round"] == 0].groupby("split")[column].mean()
    other = [s for s in sorted(prior.index) if s != shown]
    values = "; ".join(f"{s} split {number(prior[s])}" for s in [shown, *other])
    return (f"Diversity here is on the {shown} split. The validation and evaluation splits have different prompts "
            f"and numbers of images, so their diversities are not on one scale: compare methods within a split, "
            f"never a value across splits (the prior's: {values}).")


def labelled_panels(panels, split: str) -> tuple:
    """The panels with the split named in the diversity axis (its level is the split's own)."""
    return tuple((c, f"diversity on the {split} split\n(mean pairwise distance)" if c == "diversity" else label, s)
                 for c, label, s in panels)


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
    reference = ("target", REFERENCE["toy2d"]) if group == "toy2d" else ("reference", REFERENCE["images"])
    split = "evaluation" if (curves["split"] == "evaluation").any() else "validation"
    written: list[Path] = []
    figures_dir = results / "figures"
    for reward in rewards or sorted(curves["reward"].unique()):
        if reward not in set(curves["reward"]):
            raise ValueError(f"{results / 'curves.csv'} holds no run of reward '{reward}'")
        title = f"{scale} ({results.name}), reward {reward}, {split} split"
        of_reward = curves[curves["reward"] == reward]
        runs = of_reward[of_reward["split"] == split]
        diversity = split_note(of_reward, "diversity", split) if group == "images" else ""
        written += save(curve_figure(runs, labelled_panels(CURVE_PANELS[group], split), title, notes=[diversity]),
                         figures_dir / f"curves_{reward}")
        # the levels are reward values of the validation split (where the crossings are located):
        # the frontier is drawn on that split, the scale its levels are in
        level_split = "validation" if (curves["split"] == "validation").any() else split
        diversity = split_note(of_reward, "diversity", level_split) if group == "images" else ""
        written += save(frontier_figure(of_reward[of_reward["split"] == level_split],
                                        labelled_panels(FRONTIER_PANELS[group], level_split), levels.get(reward),
                                        f"{scale} ({results.name}), reward {reward}, {level_split} split",
                                        reference, notes=[diversity]),
                        figures_dir / f"frontier_{reward}")
        finished = summary[(summary["reward"] == reward)]
        if reward in samples:
            x, xlabel = (("energy_distance_prior", "energy distance to the prior (toy analogue of FID-to-prior)")
                         if scale == "toy2d" else ("fid_to_prior", "FID to the prior"))
            target = (levels.get(reward) or {}).get("reference_reward")
            # at toy2d the exact target's reward is the same on every split; the image scales'
            # reference is a validation-split reach, not a value of this (evaluation) split
            line = ("exact target's mean reward", target) if group == "toy2d" and target is not None else None
            written += save(tradeoff_figure(finished, x, "reward_mean", xlabel, "mean reward", f"{title}, end of budget",
                                            reference=line),
                            figures_dir / f"tradeoff_{reward}")
            draw = toy2d_samples_figure if scale == "toy2d" else image_samples_figure
            written += save(draw(samples[reward], title=f"{title}; run seed 0"), figures_dir / f"samples_{reward}")
    return written


def figure_names(scale: str, rewards: Sequence[str], evaluated: bool = True) -> list[str]:
    """The files ``figures`` writes (for the workflow's outputs), relative to the results folder."""
    kinds = ("curves", "frontier", "tradeoff", "samples") if evaluated else ("curves", "frontier")
    return [f"figures/{k}_{r}.{e}" for k in kinds for r in rewards for e in ("png", "pdf")]
