"""Curves and figures drawn from cached results only (no run folders)."""

import json

import matplotlib.colors as mcolors
import pandas as pd
import pytest
import torch

from nabla.data.toy2d import circle_mixture
from nabla.report.curves import collect_curves, run_curves
from nabla.report.figures import METHOD_COLORS, curve_figure, toy2d_figures, toy2d_samples_figure, tradeoff_figure
from nabla.report.tables import summary_frame


def fake_run(folder, method, seed, finished=True):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"scale: toy2d\nreward: linear\nmethod: {method}\nseed: {seed}\n")
    (folder / "eval_log.csv").write_text(
        "step,seconds,eval_reward_mean,eval_reward_std,energy_distance_target,mass_tv_target\n"
        f"0,0.0,0.1,1.0,1.3,0.42\n10,{2.0 + seed},{0.5 + seed},1.0,{0.4 + 0.1 * seed},0.2\n"
    )
    if finished:
        (folder / "done.json").write_text("{}")
    return folder


def test_curves_carry_the_run_keys_and_refuse_unfinished_runs(tmp_path):
    runs = [fake_run(tmp_path / m / str(s), m, s) for m in ("ddpo", "residual_nabla_db") for s in (0, 1)]
    curves = collect_curves(runs)
    assert list(curves.columns[:4]) == ["scale", "reward", "method", "seed"]
    assert len(curves) == 8 and set(curves["method"]) == {"ddpo", "residual_nabla_db"}
    with pytest.raises(FileNotFoundError, match="not finished"):
        run_curves(fake_run(tmp_path / "x", "ddpo", 0, finished=False))


def line_colors(fig):
    return {line.get_label(): mcolors.to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}


def test_a_method_has_one_colour_in_every_figure(tmp_path):
    curves = collect_curves([fake_run(tmp_path / m, m, 0) for m in ("ddpo", "draft")])
    colors = line_colors(curve_figure(curves))
    assert colors == {"DDPO": METHOD_COLORS["ddpo"], "DRaFT-1": METHOD_COLORS["draft"]}
    summary = pd.DataFrame({"method": ["ddpo", "draft"], "energy_distance_prior": [0.3, 1e20], "reward_mean": [1.5, 9.0]})
    fig = tradeoff_figure(summary, "energy_distance_prior", "reward_mean", "x", "y")
    legend = {t.get_text(): mcolors.to_hex(h.get_facecolor()[0]) for t, h in
              zip(fig.axes[0].get_legend().get_texts(), fig.axes[0].get_legend().legend_handles)}
    assert legend == {"DDPO": METHOD_COLORS["ddpo"], "DRaFT-1": METHOD_COLORS["draft"]}


def test_samples_figure_counts_samples_off_the_panel():
    record = {"method": "refl", "target": circle_mixture().to_dict(), "samples": [[0.0, 4.0], [1.0, -4.0], [1e6, 0.0]]}
    fig = toy2d_samples_figure([record], extent=7.0)
    assert "(1 of 3 off the panel)" in fig.axes[0].get_title()


def test_toy2d_figures_redraw_from_results_alone(tmp_path):
    results = tmp_path / "results" / "toy2d"
    metrics = []
    for method in ("pretrained", "residual_nabla_db"):
        path = results / "metrics" / "linear" / method / "seed0.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({
            "scale": "toy2d", "reward": "linear", "seed": 0, "method": method, "reward_mean": 1.0,
            "energy_distance_prior": 0.1, "beta": 0.5, "masses": [0.5, 0.5],
            "target": circle_mixture().to_dict(), "samples": [[0.0, 4.0], [4.0, 0.0]],
        }))
        metrics.append(path)
    summary = summary_frame(metrics)
    assert "samples" not in summary and "target" not in summary  # figure-only entries stay out
    summary.to_csv(results / "summary.csv", index=False)
    collect_curves([fake_run(tmp_path / "run", "residual_nabla_db", 0)]).to_csv(results / "curves.csv", index=False)
    written = toy2d_figures(results)
    names = sorted(p.name for p in written)
    assert names == sorted(f"{k}_linear.{e}" for k in ("curves", "tradeoff", "samples") for e in ("png", "pdf"))
    assert all(p.stat().st_size > 1000 for p in written)


def test_sample_strip_round_trips_through_png_base64():
    from nabla.report.grids import from_png_base64, png_base64

    images = torch.rand(5, 3, 8, 6)
    quantised = (images * 255).round() / 255
    torch.testing.assert_close(from_png_base64(png_base64(images), 5), quantised, rtol=0, atol=1e-6)


def test_tradeoff_axes_are_symlog_only_where_values_span_decades():
    wide = pd.DataFrame({"method": ["pretrained", "draft"], "fid_to_prior": [0.0, 22.0], "reward_mean": [0.19, 0.31]})
    ax = tradeoff_figure(wide, "fid_to_prior", "reward_mean", "x", "y").axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "linear"
    narrow = wide.assign(fid_to_prior=[0.267, 0.206], reward_mean=[1.5, 40.0])  # a diversity; rewards up to 40
    ax = tradeoff_figure(narrow, "fid_to_prior", "reward_mean", "x", "y").axes[0]
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "symlog"
