"""Tables and figures from group records and results folders only (no run folders)."""

import json

import matplotlib.colors as mcolors
import pandas as pd
import pytest
import torch

from nabla.data.toy2d import circle_mixture
from nabla.report.aggregate import aggregate, select_settings
from nabla.report.figures import (method_color, curve_figure, figures, frontier_figure, toy2d_samples_figure,
                                  tradeoff_figure)
from nabla.report.tables import (curves_frame, end_of_budget_table, mean_std, mean_vector_table, reward_levels,
                                 summary_frame)

LEVELS = {"prior_reward": 0.0, "target_reward": 2.0}


def curve(rewards, distances, rounds=(0, 10, 20), splits=("validation", "evaluation")):
    return [{"step": 2 * r, "round": r, "trajectories": 100 * r, "seconds": 0.1 * r, "split": split,
             "reward_mean": reward, "energy_distance_target": distance, "mass_tv_target": 0.2,
             "energy_distance_own_target": None, "energy_distance_prior": 0.1 * r}
            for r, reward, distance in zip(rounds, rewards, distances) for split in splits]


def run_record(name, seed, rewards, distances, diverged_at=None, metrics=True, settings=None):
    return {"run": name, "seed": seed, "settings": settings or {}, "levels": LEVELS,
            "train": {"rounds": 20, "updates": 40, "trajectories": 2000, "train_seconds": 3.0 + seed,
                      "diverged_at": diverged_at, "target": "tilted", "target_beta": 0.5},
            "curves": curve(rewards, distances),
            "metrics": {"reward_mean": rewards[-1], "energy_distance_target": distances[-1], "mass_tv_target": 0.2,
                        "energy_distance_own_target": None, "energy_distance_prior": 0.3, "masses": [0.4, 0.6],
                        "target_masses": [0.5, 0.5], "target": circle_mixture().to_dict(),
                        "samples": [[0.0, 4.0], [4.0, 0.0]]} if metrics else None}


def write_group(path, method, runs, protocol="release"):
    path.write_text(json.dumps({"scale": "toy2d", "protocol": protocol, "reward": "linear", "method": method,
                                "runs": runs}))
    return path


@pytest.fixture()
def toy_results(tmp_path):
    groups = [
        write_group(tmp_path / "a.json", "residual_nabla_db",
                    [run_record("seed0", 0, [0.0, 1.0, 1.8], [1.3, 0.6, 0.2]),
                     run_record("seed1", 1, [0.0, 0.8, 1.6], [1.3, 0.7, 0.4])]),
        write_group(tmp_path / "b.json", "draft", [run_record("seed0", 0, [0.0, 3.0, 9.0], [1.3, 1.5, 3.0], diverged_at=33)]),
    ]
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"scale": "toy2d", "reward": "linear", "method": "pretrained", "reward_mean": 0.0,
                                 "energy_distance_target": 1.3, "energy_distance_prior": 0.0, "masses": [0.5, 0.5],
                                 "target_masses": [0.5, 0.5], "target": circle_mixture().to_dict(),
                                 "samples": [[0.0, 4.0]]}))
    out = tmp_path / "results" / "toy2d" / "release"
    aggregate("toy2d", "release", groups, [prior], out)
    return out


def test_the_end_of_budget_table_is_honest_about_seeds_divergence_and_the_prior(toy_results):
    table = (toy_results / "table.md").read_text()
    end_of_budget = table.split("mass per prior mixture component")[0]
    rows = {line.split("|")[2].strip(): line for line in end_of_budget.splitlines() if line.startswith("| linear")}
    # two seeds: mean ± sample std (ddof 1): mean 1.7, std of (1.8, 1.6) = 0.1414
    assert "1.700 ± 0.141" in rows["residual_nabla_db"] and "| 2 " in rows["residual_nabla_db"]
    # one seed: the value alone; a diverged run says where
    assert "diverged at update 33 (1 of 1)" in rows["draft"] and "±" not in rows["draft"].split("|")[9]
    assert "| –" in rows["pretrained"]  # no seed count, no std: the prior is evaluated once
    assert "exact target" in table  # the mode-mass table below


def test_matched_reward_reads_each_run_where_its_validation_reward_crosses_the_level(toy_results):
    matched = pd.read_csv(toy_results / "matched.csv")
    levels = json.loads((toy_results / "levels.json").read_text())["linear"]
    assert levels["levels"] == {"0.5": 1.0, "0.75": 1.5}
    row = matched[(matched["run"] == "seed0") & (matched["method"] == "residual_nabla_db") & (matched["level"] == 0.5)]
    assert row["round"].item() == pytest.approx(10.0) and row["energy_distance_target"].item() == pytest.approx(0.6)
    later = matched[(matched["run"] == "seed1") & (matched["method"] == "residual_nabla_db") & (matched["level"] == 0.75)]
    # seed 1 reaches 1.5 at 10 + 10·(0.7/0.8) rounds; its distance interpolates 0.7 → 0.4
    assert later["round"].item() == pytest.approx(18.75) and later["energy_distance_target"].item() == pytest.approx(0.4375)
    table = (toy_results / "matched.md").read_text()
    assert "| 2 of 2 " in table


def test_figures_redraw_from_the_results_folder_alone(toy_results):
    written = figures(toy_results, "toy2d")
    names = sorted(p.name for p in written)
    assert names == sorted(f"{k}_linear.{e}" for k in ("curves", "frontier", "tradeoff", "samples") for e in ("png", "pdf"))
    assert all(p.stat().st_size > 1000 for p in written)


def test_selection_takes_each_methods_lowest_divergence_at_the_level(tmp_path):
    group = write_group(tmp_path / "tune.json", "ddpo", [
        run_record("p0", 0, [0.0, 0.4, 0.6], [1.3, 1.1, 1.0], metrics=False, settings={"lr": 1e-3}),
        run_record("p1", 0, [0.0, 1.0, 2.0], [1.3, 0.5, 0.3], metrics=False, settings={"lr": 2e-3}),
        run_record("p2", 0, [0.0, 1.0, 2.0], [1.3, 0.9, 0.8], metrics=False, settings={"lr": 4e-3}),
    ], protocol="tune")
    selected = select_settings("toy2d", [group], tmp_path / "selected.yaml", 0.5)
    ddpo = selected["rewards"]["linear"]["methods"]["ddpo"]
    assert ddpo["settings"] == {"lr": 2e-3} and ddpo["edges"] == {"lr": "interior"}
    assert [p["reached"] for p in ddpo["validation"]] == [False, True, True]
    assert "&id" not in (tmp_path / "selected.yaml").read_text()  # no YAML aliases: people read it


def test_image_levels_follow_the_majority_of_methods_not_the_one_that_runs_furthest():
    def image_run(method, name, seed, rewards, settings):
        rows = [{"round": r, "split": "validation", "reward_mean": v} for r, v in zip((0, 10, 20), rewards)]
        return {"reward": "colorfulness", "method": method, "run": name, "seed": seed, "settings": settings,
                "train": {}, "curves": rows}

    runs = [  # seeds average before the maximum; a grid's best setting is the method's reach
        image_run("draft", "seed0", 0, [0.1, 0.5, 0.3], {}), image_run("draft", "seed1", 1, [0.1, 0.3, 0.5], {}),
        image_run("ddpo", "p0", 0, [0.1, 0.2, 0.6], {"lr": 1}), image_run("ddpo", "p1", 0, [0.1, 0.3, 0.2], {"lr": 2}),
        image_run("refl", "seed0", 0, [0.1, 3.0, 9.0], {}),
    ]
    levels = reward_levels(curves_frame(runs), {}, [0.5])["colorfulness"]
    assert levels["method_reaches"] == pytest.approx({"draft": 0.4, "ddpo": 0.6, "refl": 9.0})
    assert levels["prior_reward"] == pytest.approx(0.1)
    assert levels["reference_reward"] == pytest.approx(0.6)  # ddpo's: 2 of 3 methods reach it; refl's 9 moves nothing
    assert levels["levels"][0.5] == pytest.approx(0.35)


def test_mean_std_is_the_sample_std_and_marks_single_or_missing_values():
    assert mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000" and mean_std([0.5]) == "0.500" and mean_std([]) == "–"
    assert mean_std([float("nan"), 2.0]) == "2.000"


def test_vector_metrics_are_averaged_per_entry_beside_the_exact_reference():
    frame = pd.DataFrame({
        "reward": ["linear"] * 2, "method": ["ddpo"] * 2, "seed": [0, 1],
        "masses": ["[0.2, 0.8]", "[0.4, 0.6]"], "target_masses": ["[0.5, 0.5]"] * 2,
    })
    table = mean_vector_table(frame, "masses", reference="target_masses")
    assert table["method"].tolist() == ["exact target", "ddpo"]
    assert table["masses[0]"].tolist() == [0.5, 0.3] and table["masses[1]"].tolist() == [0.5, 0.7]


def line_colors(fig):
    return {line.get_label(): mcolors.to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}


def test_a_method_has_one_colour_in_every_figure():
    curves = pd.DataFrame([{**row, "method": m, "diverged": False} for m in ("ddpo", "draft")
                           for row in curve([0.0, 1.0, 2.0], [1.0, 0.5, 0.3], splits=("evaluation",))])
    colors = line_colors(curve_figure(curves, (("reward_mean", "r", False),)))
    assert colors == {"DDPO": method_color("ddpo"), "DRaFT-1": method_color("draft")}
    summary = pd.DataFrame({"method": ["ddpo", "draft"], "energy_distance_prior": [0.3, 1e20], "reward_mean": [1.5, 9.0]})
    fig = tradeoff_figure(summary, "energy_distance_prior", "reward_mean", "x", "y")
    legend = {t.get_text(): mcolors.to_hex(h.get_markerfacecolor()) for t, h in
              zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    assert legend == {"DDPO": method_color("ddpo"), "DRaFT-1": method_color("draft")}
    points = {mcolors.to_hex(c.get_facecolor()[0]) for c in fig.axes[0].collections}
    assert points == {method_color("ddpo"), method_color("draft")}


def test_samples_figure_counts_samples_off_the_panel():
    record = {"method": "refl", "target": circle_mixture().to_dict(), "samples": [[0.0, 4.0], [1.0, -4.0], [1e6, 0.0]]}
    fig = toy2d_samples_figure([record], extent=7.0)
    assert "(1 of 3 off the panel)" in fig.axes[0].get_title()


def test_summary_rows_leave_the_figure_material_out():
    summary = summary_frame([{"reward": "linear", "method": "ddpo", "run": "seed0", "seed": 0, "settings": {},
                              "train": {"rounds": 1}, "metrics": {"reward_mean": 1.0, "samples": [[0.0, 1.0]]}}])
    assert "samples" not in summary and summary["reward_mean"].item() == 1.0
    assert end_of_budget_table(summary.assign(train_seconds=1.0, updates=2, trajectories=3), ["reward_mean"]).loc[0, "seeds"] == 1


def test_sample_strip_round_trips_through_png_base64():
    from nabla.report.grids import from_png_base64, png_base64

    images = torch.rand(5, 3, 8, 6)
    quantised = (images * 255).round() / 255
    torch.testing.assert_close(from_png_base64(png_base64(images), 5), quantised, rtol=0, atol=1e-6)


def test_tradeoff_axes_are_symlog_only_where_values_span_decades():
    wide = pd.DataFrame({"method": ["pretrained", "ddpo", "draft"], "fid_to_prior": [0.0, 0.5, 22.0],
                         "reward_mean": [0.19, 0.2, 0.31]})
    ax = tradeoff_figure(wide, "fid_to_prior", "reward_mean", "x", "y").axes[0]
    # the prior's FID is 0: symlog, linear up to the smallest positive value's decade
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "linear" and ax.get_xlim()[0] < 0
    positive = wide.assign(fid_to_prior=[6e-4, 1e-3, 3.0])  # energy distances, all > 0: log
    assert tradeoff_figure(positive, "fid_to_prior", "reward_mean", "x", "y").axes[0].get_xscale() == "log"
    narrow = wide.assign(fid_to_prior=[0.267, 0.206, 0.25], reward_mean=[1.5, 40.0, 9.0])  # rewards up to 40: linear
    ax = tradeoff_figure(narrow, "fid_to_prior", "reward_mean", "x", "y").axes[0]
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"
    hacked = narrow.assign(reward_mean=[1.5, 4000.0, 9.0])  # spanning three decades: symlog
    assert tradeoff_figure(hacked, "fid_to_prior", "reward_mean", "x", "y").axes[0].get_yscale() == "symlog"


def test_the_frontier_shows_the_prior_to_reference_range_and_names_a_method_that_runs_past_it():
    rows = [{"method": method, "round": r, "reward_mean": reward, "energy_distance_target": 1.0 / (1 + r)}
            for method, rewards in (("ddpo", (0.0, 1.0, 1.8)), ("draft", (0.0, 1.5, 1e20)))
            for r, reward in zip((0, 10, 20), rewards)]
    levels = {"prior_reward": 0.0, "reference_reward": 2.0, "levels": {"0.5": 1.0}}
    fig = frontier_figure(pd.DataFrame(rows), [("energy_distance_target", "ED", False)], levels)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((-0.2, 2.2))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["DDPO", "DRaFT-1 (runs past the range)"]
    # the y range is that of the evaluations inside the x range (the diverged one's last is not)
    assert ax.get_ylim()[1] == pytest.approx(1.0 + 0.05 * (1.0 - 1 / 21))
    # at the image scales the reference is the majority's reach: the range runs to the furthest method
    images = frontier_figure(pd.DataFrame(rows), [("energy_distance_target", "ED", False)],
                             {**levels, "method_reaches": {"ddpo": 2.0, "draft": 4.0}})
    assert images.axes[0].get_xlim() == pytest.approx((-0.4, 4.4))
