"""Per-run metrics → one summary CSV → mean ± std tables over seeds (Markdown and LaTeX)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

#: the order methods appear in every table and figure (reference row first)
METHOD_ORDER = (
    "pretrained", "residual_nabla_db", "nabla_db", "db_gflownet", "ddpo", "draft", "draft_lv", "refl",
)


#: metrics-file entries that only the figures read (samples, the target's parameters)
FIGURE_ONLY = ("samples", "target", "sample_strip", "sample_strip_prompts")


def summary_frame(metric_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per (scale, reward, method, seed); list-valued metrics are kept as JSON strings."""
    rows = []
    for path in metric_files:
        metrics = json.loads(Path(path).read_text())
        rows.append({k: json.dumps(v) if isinstance(v, list) else v for k, v in metrics.items() if k not in FIGURE_ONLY})
    frame = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    frame["_order"] = frame["method"].map(lambda m: order.get(m, len(order)))
    return frame.sort_values(["scale", "reward", "_order", "seed"]).drop(columns="_order").reset_index(drop=True)


def _number(value: float, digits: int) -> str:
    """Fixed point, or 3 significant digits for a diverged run's astronomic values."""
    return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"


def mean_std_table(frame: pd.DataFrame, columns: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """Rows (reward, method), cells 'mean ± std' over seeds (population std), plus the seed count."""
    grouped = frame.groupby(["reward", "method"], sort=False)
    table = pd.DataFrame({"seeds": grouped["seed"].nunique()})
    if "diverged_at" in frame:  # runs stopped by a NaN/inf (their last finite weights are evaluated)
        table["diverged"] = grouped["diverged_at"].count()
    for column in columns:
        mean, std = grouped[column].mean(), grouped[column].std(ddof=0)
        table[column] = [f"{_number(m, digits)} ± {_number(s, digits)}" for m, s in zip(mean, std)]
    return table.reset_index()


def mean_vector_table(frame: pd.DataFrame, column: str, reference: str | None = None, digits: int = 3) -> pd.DataFrame:
    """Rows (reward, method), one cell per vector entry (e.g. mass per mixture component), mean over seeds.

    `reference` names a vector column that is the same for every run (e.g. the exact target
    masses); it is added as a first row per reward.
    """
    vectors = frame[column].map(json.loads)
    width = len(vectors.iloc[0])
    entries = pd.DataFrame(vectors.tolist(), columns=[f"{column}[{i}]" for i in range(width)], index=frame.index)
    table = pd.concat([frame[["reward", "method"]], entries], axis=1).groupby(["reward", "method"], sort=False).mean()
    if reference:
        exact = frame.groupby("reward", sort=False)[reference].first().map(json.loads)
        rows = pd.DataFrame(exact.tolist(), columns=table.columns, index=pd.MultiIndex.from_tuples(
            [(reward, "exact target") for reward in exact.index], names=["reward", "method"]))
        table = pd.concat([rows, table])
    return table.round(digits).reset_index()


def write_tables(table: pd.DataFrame, stem: str | Path, caption: str) -> list[Path]:
    """`stem`.md and `stem`.tex; the caption states how many seeds each row averages."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = stem.with_suffix(".md")
    md.write_text(f"{caption}\n\n{table.to_markdown(index=False)}\n")
    tex = stem.with_suffix(".tex")
    latex = table.to_latex(index=False, escape=True, caption=caption, label=f"tab:{stem.name}")
    tex.write_text(latex.replace("±", r"$\pm$"))
    return [md, tex]
