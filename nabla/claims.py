"""The paper's claims about residual ∇-DB, each a rule over a protocol's matched-reward results.

The paper (Liu et al., ICLR 2025) claims that residual ∇-DB aligns a diffusion model to a reward
*fast* while keeping *diversity* and the *prior*, compared with DDPO, DRaFT, ReFL and DB-GFlowNet.
Each claim is read here as one comparison at a matched reward level (``matched.csv``:
:mod:`nabla.protocol`), seed by seed, against each of the paper's baselines:

=============== ========================================= ==========================================
claim           images (tiny, sd15)                       toy2d (exact target known)
=============== ========================================= ==========================================
fast reward     fewer training trajectories to reach the level (both scales)
diversity kept  higher diversity at the level              lower mode-mass TV to the exact tilted
                                                           target at the level (a collapsed sampler
                                                           has the wrong mode masses)
prior kept      lower FID-to-prior at the level            lower energy distance to the prior
=============== ========================================= ==========================================

Seeds are paired by their seed number (every method's seed s draws the same evaluation noise).
Per pair:

* both reached the level: the paper's method *agrees* when it is strictly better on the measure;
* only the paper's method reached it: *agrees* for fast reward; *not comparable* for the other two
  (there is no baseline value at that reward);
* only the baseline reached it: *against* (the paper's method did not get there);
* neither did: *not comparable*.

The verdict over the seeds that are comparable: **holds** where every one agrees, **does not hold**
where none does, **mixed** otherwise, **not comparable** where no seed is. Nothing here is typed by
hand: the README's verdicts and headline table are written from these functions (:mod:`nabla.readme`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from nabla.report.figures import method_label as label
from nabla.report.tables import kind as scale_kind

#: the paper's method, and the baselines the paper compares it with (its Table 1)
PAPER_METHOD = "residual_nabla_db"
PAPER_BASELINES = ("ddpo", "draft", "draft_lv", "refl", "db_gflownet")
#: the level the verdicts of the README are read at: the tuning rule's (``tune.level``), 50% of the
#: way from the prior's reward to the reference's; claims.md also has the 75% level
HEADLINE_LEVEL = 0.5


@dataclass(frozen=True)
class Measure:
    column: str  # of matched.csv
    lower_is_better: bool
    what: str  # how the verdict table names it


@dataclass(frozen=True)
class Claim:
    name: str
    measures: dict  # kind of scale ("toy2d" or "images") → Measure


CLAIMS = (
    Claim("fast reward", {
        "toy2d": Measure("trajectories", True, "trajectories to the level"),
        "images": Measure("trajectories", True, "trajectories to the level"),
    }),
    Claim("diversity kept", {
        "toy2d": Measure("mass_tv_target", True, "mode-mass TV to the exact target"),
        "images": Measure("diversity", False, "diversity"),
    }),
    Claim("prior kept", {
        "toy2d": Measure("energy_distance_prior", True, "energy distance to the prior"),
        "images": Measure("fid_to_prior", True, "FID-to-prior"),
    }),
)
VERDICTS = ("holds", "mixed", "does not hold", "not comparable")


def compare_pair(claim: str, paper: pd.Series, baseline: pd.Series, measure: Measure) -> str:
    """'agree', 'against' or 'not comparable' for one seed's pair of matched rows (rules above)."""
    if paper["reached"] and baseline["reached"]:
        a, b = float(paper[measure.column]), float(baseline[measure.column])
        if not (math.isfinite(a) and math.isfinite(b)):
            return "not comparable"
        return "agree" if (a < b if measure.lower_is_better else a > b) else "against"
    if paper["reached"]:
        return "agree" if claim == "fast reward" else "not comparable"
    if baseline["reached"]:
        return "against"
    return "not comparable"


def verdict(agree: int, against: int) -> str:
    if agree + against == 0:
        return "not comparable"
    if against == 0:
        return "holds"
    return "does not hold" if agree == 0 else "mixed"


def reached_flags(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``reached`` column as booleans (however the CSV spelled them)."""
    frame = frame.copy()
    frame["reached"] = frame["reached"].map(lambda v: v is True or str(v).lower() == "true")
    return frame


def claims_frame(matched: pd.DataFrame, scale: str, paper: str = PAPER_METHOD,
                 baselines: Sequence[str] = PAPER_BASELINES) -> pd.DataFrame:
    """One row per (reward, level, claim, baseline): the seeds that agree, are against, or are not
    comparable, and the verdict. Baselines absent from ``matched`` are left out."""
    matched = reached_flags(matched)
    kind = scale_kind(scale)
    rows = []
    for (reward, level), group in matched.groupby(["reward", "level"], sort=True):
        ours = group[group["method"] == paper].set_index("seed")
        if ours.empty:
            continue
        for claim in CLAIMS:
            measure = claim.measures[kind]
            for baseline in baselines:
                theirs = group[group["method"] == baseline].set_index("seed")
                if theirs.empty:
                    continue
                outcomes = {seed: compare_pair(claim.name, ours.loc[seed], theirs.loc[seed], measure)
                            for seed in sorted(set(ours.index) & set(theirs.index))}
                counts = {k: sum(v == k for v in outcomes.values()) for k in ("agree", "against", "not comparable")}
                rows.append({
                    "reward": reward, "level": float(level), "claim": claim.name, "measure": measure.what,
                    "baseline": baseline, "seeds": len(outcomes), **counts,
                    "verdict": verdict(counts["agree"], counts["against"]),
                })
    return pd.DataFrame(rows, columns=["reward", "level", "claim", "measure", "baseline", "seeds", "agree",
                                       "against", "not comparable", "verdict"])


def seeds_text(row: pd.Series) -> str:
    """'3 of 3 seeds agree', naming the seeds that could not be compared."""
    compared = int(row["agree"]) + int(row["against"])
    text = f"{int(row['agree'])} of {compared} seeds agree"
    if int(row["not comparable"]):
        text += f" ({int(row['not comparable'])} not comparable)"
    return text


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """claims.md's rows: every (reward, level, claim, baseline) with its verdict and seed counts."""
    if claims.empty:
        return pd.DataFrame(columns=["reward", "level", "claim", "measure", "against", "verdict", "seeds"])
    return pd.DataFrame({
        "reward": claims["reward"], "level": claims["level"].map(lambda f: f"{f:.0%}"), "claim": claims["claim"],
        "measure": claims["measure"], "against": claims["baseline"].map(label),
        "verdict": claims["verdict"], "seeds": claims.apply(seeds_text, axis=1),
    })


def overall(verdicts: Sequence[str]) -> str:
    """A claim over the baselines: **holds** against every comparable one, **does not hold** against
    any (none holds, none is mixed), **mixed** otherwise, **not comparable** where none is."""
    compared = [v for v in verdicts if v != "not comparable"]
    if not compared:
        return "not comparable"
    if all(v == "holds" for v in compared):
        return "holds"
    return "does not hold" if all(v == "does not hold" for v in compared) else "mixed"


def summarise(claims: pd.DataFrame, level: float = HEADLINE_LEVEL) -> pd.DataFrame:
    """Per (reward, claim) at ``level``: the verdict over the baselines, and how many baselines each
    verdict has ('holds vs 2, mixed vs 3')."""
    rows = []
    at = claims[claims["level"] == level]
    for (reward, claim), group in at.groupby(["reward", "claim"], sort=False):
        by_verdict = {v: group.loc[group["verdict"] == v, "baseline"].tolist() for v in VERDICTS}
        counts = ", ".join(f"{v} vs {len(names)}" for v, names in by_verdict.items() if names)
        rows.append({"reward": reward, "claim": claim, "verdict": overall(group["verdict"].tolist()),
                     "baselines": counts})
    order = {c.name: i for i, c in enumerate(CLAIMS)}
    frame = pd.DataFrame(rows, columns=["reward", "claim", "verdict", "baselines"])
    return frame.assign(_o=frame["claim"].map(order)).sort_values(["_o", "reward"], kind="stable").drop(
        columns="_o").reset_index(drop=True)


def write_claims(results: str | Path, scale: str) -> list[Path]:
    """claims.csv and claims.md of one protocol's results folder, from its matched.csv."""
    results = Path(results)
    claims = claims_frame(pd.read_csv(results / "matched.csv"), scale)
    csv, md = results / "claims.csv", results / "claims.md"
    claims.to_csv(csv, index=False)
    intro = (f"The paper's claims about {label(PAPER_METHOD)} against each of its baselines, at matched "
             f"reward, seed by seed (rules: `nabla/claims.py`). A level is a fraction of the way from the "
             f"prior's reward to the reference's (`levels.json`). A seed is not comparable where neither method "
             f"reached the level, or (diversity, prior) where only the paper's method did.")
    md.write_text(f"{intro}\n\n{claims_table(claims).to_markdown(index=False)}\n")
    return [csv, md]
