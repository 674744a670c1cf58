"""The paper's claims as rules (nabla/claims.py) and the texts written from them (nabla/readme.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from nabla import claims, readme

ROOT = Path(__file__).resolve().parents[1]
LOWER = claims.Measure("fid_to_prior", True, "FID")
HIGHER = claims.Measure("diversity", False, "diversity")


def row(reached: bool, value: float = float("nan"), trajectories: float = float("nan")) -> pd.Series:
    return pd.Series({"reached": reached, "fid_to_prior": value, "diversity": value, "trajectories": trajectories})


@pytest.mark.parametrize("claim, paper, baseline, measure, expected", [
    ("prior kept", row(True, 1.0), row(True, 2.0), LOWER, "agree"),
    ("prior kept", row(True, 2.0), row(True, 1.0), LOWER, "against"),
    ("prior kept", row(True, 1.0), row(True, 1.0), LOWER, "against"),  # a tie is not "better"
    ("diversity kept", row(True, 0.3), row(True, 0.2), HIGHER, "agree"),
    ("diversity kept", row(True, 0.2), row(True, 0.3), HIGHER, "against"),
    ("prior kept", row(True, 1.0), row(False), LOWER, "not comparable"),  # no baseline value at the level
    ("fast reward", row(True, trajectories=100), row(False), claims.Measure("trajectories", True, "t"), "agree"),
    ("fast reward", row(False), row(True, trajectories=100), claims.Measure("trajectories", True, "t"), "against"),
    ("prior kept", row(False), row(True, 1.0), LOWER, "against"),
    ("prior kept", row(False), row(False), LOWER, "not comparable"),
])
def test_compare_pair_follows_the_written_rules(claim, paper, baseline, measure, expected):
    assert claims.compare_pair(claim, paper, baseline, measure) == expected


@pytest.mark.parametrize("agree, against, expected", [
    (3, 0, "holds"), (0, 3, "does not hold"), (2, 1, "mixed"), (0, 0, "not comparable")])
def test_verdict(agree, against, expected):
    assert claims.verdict(agree, against) == expected


@pytest.mark.parametrize("verdicts, expected", [
    (["holds", "holds", "not comparable"], "holds"),
    (["does not hold", "not comparable"], "does not hold"),
    (["holds", "does not hold"], "mixed"),
    (["does not hold", "mixed"], "mixed"),
    (["not comparable"], "not comparable"),
])
def test_overall_verdict_over_baselines(verdicts, expected):
    assert claims.overall(verdicts) == expected


def matched_rows(method: str, values: list[tuple[bool, float, float, float]]) -> list[dict]:
    """(reached, trajectories, diversity, fid) per seed 0, 1, 2 at level 0.5."""
    return [{"reward": "r", "method": method, "seed": seed, "level": 0.5, "reached": reached, "trajectories": t,
             "diversity": d, "fid_to_prior": f} for seed, (reached, t, d, f) in enumerate(values)]


def test_claims_frame_counts_seeds_by_pairs():
    nan = float("nan")
    matched = pd.DataFrame(
        matched_rows("residual_nabla_db", [(True, 100, 0.30, 5.0), (True, 300, 0.10, 9.0), (False, nan, nan, nan)])
        + matched_rows("ddpo", [(True, 200, 0.20, 6.0), (True, 200, 0.20, 6.0), (True, 150, 0.25, 4.0)])
        + matched_rows("refl", [(False, nan, nan, nan)] * 3))
    frame = claims.claims_frame(matched, "tiny").set_index(["claim", "baseline"])
    # vs DDPO: seed 0 better on all three, seed 1 worse on all three, seed 2 not reached → against
    for claim in ("fast reward", "diversity kept", "prior kept"):
        got = frame.loc[(claim, "ddpo")]
        assert (got["agree"], got["against"], got["not comparable"], got["verdict"]) == (1, 2, 0, "mixed")
    # vs ReFL, which never reached: faster wherever ours reached; nothing to compare diversity with
    fast = frame.loc[("fast reward", "refl")]
    assert (fast["agree"], fast["against"], fast["not comparable"], fast["verdict"]) == (2, 0, 1, "holds")
    div = frame.loc[("diversity kept", "refl")]
    assert (div["agree"], div["against"], div["verdict"]) == (0, 0, "not comparable")
    # toy2d reads other columns: the same frame has none of them at toy2d
    with pytest.raises(KeyError):
        claims.claims_frame(matched, "toy2d")


def committed_protocols() -> list[tuple[str, Path]]:
    return sorted((path.parent.parent.name.split("-")[0], path.parent)
                  for path in (ROOT / "results").glob("*/*/claims.csv"))


def test_committed_claims_are_what_the_rules_give():
    found = committed_protocols()
    assert found, "no committed claims.csv under results/"
    for scale, folder in found:
        expected = claims.claims_frame(pd.read_csv(folder / "matched.csv"), scale)
        committed = pd.read_csv(folder / "claims.csv")
        pd.testing.assert_frame_equal(committed, expected, check_dtype=False, obj=str(folder))


def test_readme_and_results_indexes_agree_with_the_results():
    """The README's generated sections, results/README.md and every set's README.md are what
    `python -m nabla readme` writes from the committed results."""
    assert readme.stale(ROOT) == []


def copy_of_the_repository(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "README.md", root / "README.md")
    shutil.copytree(ROOT / "config", root / "config")
    for name in ("toy2d", "tiny"):
        shutil.copytree(ROOT / "results" / name, root / "results" / name, ignore=shutil.ignore_patterns("figures"))
    return root


def test_a_changed_result_makes_the_readme_stale(tmp_path):
    root = copy_of_the_repository(tmp_path)
    readme.write(root)
    assert readme.stale(root) == []
    matched = root / "results/tiny/release/matched.csv"
    frame = pd.read_csv(matched)
    ours = (frame["method"] == "residual_nabla_db") & frame["reached"]
    frame.loc[ours, "fid_to_prior"] = 0.0  # the paper's method now keeps the prior perfectly
    frame.to_csv(matched, index=False)
    assert root / "README.md" in readme.stale(root)
    readme.write(root)
    text = (root / "README.md").read_text()
    verdicts = text[text.index("**tiny**"):]
    # against every baseline that reached the level it now holds; before, against none
    assert re.search(r"\| prior kept\s+\| \*\*holds\*\*: holds vs 2, not comparable vs 3", verdicts), verdicts


def test_a_readme_without_its_markers_is_an_error():
    with pytest.raises(ValueError, match="headline"):
        readme.replace_sections("no markers here", {"headline": "x"})


def test_every_result_set_is_indexed_with_a_description():
    index = (ROOT / "results" / "README.md").read_text()
    for folder in (ROOT / "results").iterdir():
        if folder.is_dir():
            line = next(l for l in index.splitlines() if f"[`{folder.name}`]" in l)
            assert not line.rstrip().endswith("| – |"), f"results/{folder.name} has no description"


def test_the_readme_examples_run():
    """The method and reward examples of the README define what they say they define."""
    import torch

    from nabla.methods import METHODS, Method
    from nabla.rewards import REWARDS

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 2
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})
        assert issubclass(METHODS["my_method"], Method)
        reward = REWARDS["brightness"]()
        assert torch.allclose(reward(torch.full((2, 3, 4, 4), 0.25), ["a", "b"]), torch.tensor([0.25, 0.25]))
    finally:
        METHODS.pop("my_method", None)
        REWARDS.pop("brightness", None)
