"""The committed figures: every one redrawn by `snakemake figures` from results/ alone, byte for byte
the same on every redraw (and on a fresh clone), and legible: every method told apart, an axis not
flattened by one diverging method, the frontier's lines named, the splits' diversities kept apart."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from nabla.report.figures import (DASHES, MARKERS, PRIOR_STYLE, curve_figure, figures, frontier_figure,
                                  method_styles, styles_for)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def pinned(package: str) -> str | None:
    match = re.search(rf"^{package}==(\S+)$", (ROOT / "requirements-cpu.txt").read_text(), re.M)
    return match and match.group(1)


@pytest.mark.skipif(not (RESULTS / "toy2d" / "tuned" / "curves.csv").exists(), reason="no committed toy2d results")
def test_a_result_sets_figures_redraw_byte_for_byte_whatever_the_hash_seed_and_matplotlibrc(tmp_path):
    """Two redraws of results/toy2d/tuned into copies: one here, one in a process with another hash
    seed and a hostile matplotlibrc; the same bytes, no date or version in a file, and (with the
    pinned matplotlib) the bytes committed, so that `snakemake figures` leaves git status clean."""
    first, second = tmp_path / "a" / "tuned", tmp_path / "b" / "tuned"
    for copy in (first, second):
        shutil.copytree(RESULTS / "toy2d" / "tuned", copy, ignore=shutil.ignore_patterns("figures"))
    figures(first, "toy2d")
    config = tmp_path / "mplconfig"
    config.mkdir()
    (config / "matplotlibrc").write_text("font.family: serif\nlines.linewidth: 5\nfont.size: 14\n"
                                         "axes.prop_cycle: cycler('color', ['k'])\npdf.compression: 0\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "MPLCONFIGDIR": str(config), "SOURCE_DATE_EPOCH": "86400",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "nabla", "figures", "--scale", "toy2d", "--results", str(second)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    drawn = digests(first / "figures")
    assert len(drawn) == 16 and drawn == digests(second / "figures")
    for path in (first / "figures").iterdir():
        data = path.read_bytes()
        assert b"Software" not in data and b"Matplotlib" not in data and b"CreationDate" not in data, path.name
    if matplotlib.__version__ == pinned("matplotlib"):
        assert drawn == digests(RESULTS / "toy2d" / "tuned" / "figures"), "the committed figures are stale: redraw them"


def planned_outputs(*args: str) -> tuple[set[str], str]:
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "--forceall", "-p", "figures", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    outputs = {path for line in done.stdout.splitlines() if line.strip().startswith("output:")
               for path in line.split("output:", 1)[1].strip().split(", ")}
    return outputs, done.stdout


def test_the_figures_target_redraws_every_committed_figure_from_results_alone():
    outputs, log = planned_outputs()
    committed = {str(p.relative_to(ROOT)) for p in RESULTS.rglob("*.png")}
    committed |= {str(p.relative_to(ROOT)) for p in RESULTS.rglob("figures/*.pdf")}
    committed |= {str(p.relative_to(ROOT)) for p in (RESULTS / "bench").glob("*.pdf")}
    assert committed and committed <= outputs, sorted(committed - outputs)
    # drawn from results/ alone: no job of the plan reads or writes a run folder
    jobs = set(re.findall(r"^rule (\w+):", log, re.M))
    assert jobs <= {"figures_of_a_reward", "grid_from_record", "bench_figures", "claims", "readme", "figures"}, jobs
    # (the readme job's only runs/ path is its marker, runs/readme/results.txt: it writes the READMEs)
    assert not [line for line in log.splitlines()
                if "python -m nabla" in line and "runs/" in line.replace("runs/readme/results.txt", "")]
    # whatever config is given: the sets are the folders present, not the config's
    assert planned_outputs("--configfile", "config/tiny-beta.yaml")[0] == outputs


def test_a_prior_grid_redraws_from_its_record_byte_for_byte(tmp_path):
    import torch

    from nabla.report.grids import record_from_grid, redraw_grid, save_grid

    images = torch.rand(6, 3, 8, 8)
    png = save_grid(images, ["a (train)", "b (evaluation)"], tmp_path / "grid.png", footer="seeds 0..2")
    record = tmp_path / "grid.json"
    assert record.exists()
    again = redraw_grid(record, tmp_path / "again.png")
    assert again.read_bytes() == png.read_bytes()
    # a grid saved before its record was: the record read back from its pixels redraws it
    assert record_from_grid(png, ["a (train)", "b (evaluation)"], 3, footer="seeds 0..2") == \
        __import__("json").loads(record.read_text())
    with pytest.raises(ValueError):
        record_from_grid(png, ["a (train)", "b (evaluation)"], 3, footer="other footer")
    for committed in sorted(RESULTS.glob("*/prior_samples.json")):
        redrawn = redraw_grid(committed, tmp_path / f"{committed.parent.name}.png")
        assert redrawn.read_bytes() == committed.with_suffix(".png").read_bytes(), committed


def test_every_method_has_its_own_colour_and_its_own_dash_and_marker_pair():
    styles = method_styles()
    methods = [m for m in styles if m != "pretrained"]
    assert len({styles[m]["color"] for m in styles}) == len(styles)
    assert len({(str(styles[m]["linestyle"]), styles[m]["marker"]) for m in methods}) == len(methods)
    # DRaFT-1 and DRaFT-LV draw on top of each other at toy2d: a different dash and marker
    assert styles["draft"]["linestyle"] != styles["draft_lv"]["linestyle"]
    # a grown registry: 16 methods, some without a colour or with one taken, stay apart
    classes = {f"m{i}": type(f"M{i}", (), {"color": ["#d62728", None, PRIOR_STYLE[1]][i % 3]}) for i in range(16)}
    grown = styles_for(classes)
    assert len({s["color"] for s in grown.values()}) == 17
    assert len({(str(s["linestyle"]), s["marker"]) for m, s in grown.items() if m != "pretrained"}) == 16
    assert len(DASHES) * len(MARKERS) >= 44


def toy_curves(dip: float = -500.0, spread=(0.01, 0.01, 3.0)) -> pd.DataFrame:
    rows = []
    for method, rewards in (("ddpo", (-10, -8, -6, -5)), ("draft", (-10, -6, -2, 0)), ("db_gflownet", (-10, -12, dip, -9))):
        for seed in range(3):
            for r, reward in enumerate(rewards):
                rows.append({"method": method, "run": f"seed{seed}", "round": r, "trajectories": 100 * r,
                             "seconds": r, "reward_mean": reward + 0.1 * seed, "diverged": False,
                             "energy_distance_target": spread[seed] if method == "db_gflownet" else 1.0 / (1 + r)})
    return pd.DataFrame(rows)


def test_one_method_diving_does_not_flatten_the_others_and_the_figure_says_it_is_clipped():
    fig = curve_figure(toy_curves(), (("reward_mean", "mean reward", False), ("energy_distance_target", "ED", True)))
    reward, log = fig.axes[0], fig.axes[1]
    assert -30 < reward.get_ylim()[0] < -12  # the others' span, not −500
    notes = " ".join(t.get_text() for t in reward.texts)
    assert "DB-GFlowNet below" in notes and "clipped" in notes and "−500" in notes
    # log axis: a band whose mean − std is ≤ 0 is drawn from the seeds' min, never as a block to −∞
    for band in log.collections:
        assert (band.get_paths()[0].vertices[:, 1] > 0).all()
    assert "min to max" in " ".join(t.get_text() for t in fig.texts)
    # a dip within the others' span is not clipped
    mild = curve_figure(toy_curves(dip=-14.0), (("reward_mean", "mean reward", False),))
    assert mild.axes[0].get_ylim()[0] < -14 and not mild.axes[0].texts


def test_the_frontier_names_its_levels_and_marks_the_prior_and_the_target():
    curves = toy_curves().assign(energy_distance_prior=0.1)
    levels = {"prior_reward": -10.0, "reference_reward": -2.0, "levels": {"0.75": -4.0, "0.5": -6.0}}
    fig = frontier_figure(curves, [("energy_distance_prior", "ED", "symlog")], levels)
    ax = fig.axes[0]
    labels = [t.get_text().strip() for t in ax.texts]
    assert labels == ["prior", "target", "50% level", "75% level"]
    assert sorted(line.get_xdata()[0] for line in ax.lines if len(line.get_xdata()) == 2 and
                  line.get_xdata()[0] == line.get_xdata()[1]) == [-10.0, -6.0, -4.0, -2.0]
    note = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "50% and 75% of the way from the prior's reward to the target's" in note
    assert ax.get_yscale() == "symlog"


def test_image_diversity_names_its_split_and_warns_that_splits_are_not_comparable(tmp_path):
    source = RESULTS / "tiny" / "release"
    if not (source / "curves.csv").exists():
        pytest.skip("no committed tiny results")
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("summary.csv", "curves.csv", "levels.json"):
        shutil.copy(source / name, folder / name)
    from nabla.report.figures import CURVE_PANELS, labelled_panels, split_note

    curves = pd.read_csv(folder / "curves.csv")
    curves = curves[curves["reward"] == "colorfulness"]
    note = split_note(curves, "diversity", "evaluation")
    assert "not on one scale" in note and "evaluation split 0.341" in note and "validation split 0.0332" in note
    panels = labelled_panels(CURVE_PANELS["images"], "validation")
    assert [p[1] for p in panels if p[0] == "diversity"][0].startswith("diversity on the validation split")
    fig = curve_figure(curves[curves["split"] == "evaluation"], labelled_panels(CURVE_PANELS["images"], "evaluation"),
                       notes=[note])
    assert "evaluation split" in fig.axes[1].get_ylabel()
    assert "not on one scale" in " ".join(t.get_text() for t in fig.texts).replace("\n", " ")


def test_bench_figures_name_their_reward_and_seeds(tmp_path):
    if not (RESULTS / "bench" / "curves.csv").exists():
        pytest.skip("no committed bench")
    from nabla.bench import bench_figures, bench_title

    for name in ("curves.csv", "methods.csv"):
        shutil.copy(RESULTS / "bench" / name, tmp_path / name)
    curves, methods = pd.read_csv(tmp_path / "curves.csv"), pd.read_csv(tmp_path / "methods.csv")
    toy = methods[methods["scale"] == "toy2d"]
    title = bench_title("toy2d", curves[curves["scale"] == "toy2d"], toy)
    assert f"reward {toy['reward'].iloc[0]}" in title and "seed 0" in title and "rounds" in title
    written = bench_figures(tmp_path, scales=["toy2d"])
    assert [p.name for p in written] == ["reward_toy2d.png", "reward_toy2d.pdf"]
