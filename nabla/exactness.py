"""What "exact" means at toy2d: the floor the sampler's start puts under every exact-target method.

Residual ∇-DB, Adjoint Matching, RTB and DPOK all target the prior's trajectory law tilted by
exp(βr(x_0)). Trajectories start from x_T ~ N(0, I), which no method trains, so the best any of
them can reach is ``nabla.data.toy2d.start_tilted``: x_T ~ N(0, I), then the prior's exact
conditional q(x_0 | x_T) tilted by exp(βr). Its x_0 marginal is p#·exp(βr) only if x_T were
independent of x_0; at the sampler's first timestep √ᾱ is small but not 0 (steps_offset = 1).

One row per reward, every distance an energy distance (ED) to an exact mixture:

* ``ed_start_tilted_to_target``: the best sampler with this start, to p#·exp(βr) — the start's
  floor, exact (both are Gaussian mixtures);
* ``ed_start_prior_to_prior``: the same for β = 0: an exact prior sampler from N(0, I), to p#;
* ``ed_prior_sampler_to_prior``: the learned prior's sampler, to p# (from its evaluation record,
  ``samples`` points) — the prior's discretisation and learning floor, beside which the start's
  floor is read;
* ``ed_resolution``: the spread (std over 8 draws) of the ED of ``samples`` exact points of
  p#·exp(βr) to it — what an evaluation of that size can resolve at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from nabla import diffusion
from nabla.config import load_train_config
from nabla.data.toy2d import start_tilted
from nabla.metrics.toy2d import MixtureReference, mixture_energy_distance
from nabla.models.toy2d import load_toy2d
from nabla.rewards import build_reward

COLUMNS = ("reward", "beta", "first_timestep", "alpha_bar_start", "samples", "ed_start_tilted_to_target",
           "ed_start_prior_to_prior", "ed_prior_sampler_to_prior", "ed_resolution")


RESOLUTION_DRAWS = 8


def exactness_row(config: str | Path, reward: str, prior_record: dict | None, num_samples: int, seed: int = 0,
                  model: str | None = None) -> dict:
    """The row of one reward (see the module docstring), on the config's prior or `model`."""
    cfg = load_train_config(config, "residual_nabla_db", reward, 0, model=model)
    if cfg.scale != "toy2d" or cfg.eval_target_beta is None:
        raise ValueError(f"{config}: the exactness floors need a toy2d config with eval_target_beta")
    _, prior, scheduler = load_toy2d(cfg.model)
    closed_form = build_reward(cfg.reward, **cfg.reward_options)
    target = closed_form.exact_target(prior, cfg.eval_target_beta)
    first = diffusion.timestep_pairs(scheduler, cfg.sampler.num_steps)[0][0]
    alpha_bar = float(scheduler.alphas_cumprod[first])
    generator, reference = torch.Generator().manual_seed(seed), MixtureReference(target)
    noise = [reference.energy_distances(target.sample(num_samples, generator)[0])[0] for _ in range(RESOLUTION_DRAWS)]
    return {
        "reward": reward, "beta": cfg.eval_target_beta, "first_timestep": first, "alpha_bar_start": alpha_bar,
        "samples": num_samples,
        "ed_start_tilted_to_target": mixture_energy_distance(
            start_tilted(prior, closed_form.closed_form, cfg.eval_target_beta, alpha_bar), target),
        "ed_start_prior_to_prior": mixture_energy_distance(start_tilted(prior, None, 0.0, alpha_bar), prior),
        "ed_prior_sampler_to_prior": (prior_record or {}).get("energy_distance_prior"),
        "ed_resolution": float(torch.tensor(noise).std()),
    }


def write_exactness(config: str | Path, rewards: Iterable[str], priors: Iterable[str | Path], out: str | Path,
                    num_samples: int = 4000, seed: int = 0, model: str | None = None) -> list[Path]:
    """The table for ``rewards`` (the learned prior's ED read from its records ``priors``) as
    ``out`` (CSV) and the same path with ``.md``."""
    records = {r["reward"]: r for r in (json.loads(Path(p).read_text()) for p in priors)}
    frame = pd.DataFrame([exactness_row(config, reward, records.get(reward), num_samples, seed, model) for reward in rewards],
                         columns=list(COLUMNS))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    markdown = out.with_suffix(".md")
    markdown.write_text(frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    return [out, markdown]
