"""Evaluate a finished run (or the prior itself) with the same prompts, seeds and noise for all.

At toy2d the answer is known: samples are compared with the exact reward-tilted target
p#(x)·exp(βr(x)) (energy distance, mass per mixture component and its total variation from the
exact weights) and with the prior, and the mean reward is reported. At the image scales: reward,
diversity and FID-to-prior in a feature network's space (``nabla.metrics``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from nabla.hub import check_available
from nabla.metrics.features import build_features, feature_models
from nabla.metrics.images import diversity, fid_to_prior
from nabla.metrics.toy2d import component_masses, distances_to_target, energy_distance
from nabla.report.grids import png_base64
from nabla.rewards import build_reward
from nabla.sampling import rollout, sample_images
from nabla.trainer import TrainConfig, build_backend, options_from_dict

#: seeds of evaluation samples: the same for every method, never used in training (see round_seeds)
EVAL_SEED_OFFSET = 0
#: samples stored in a metrics file for the sample figures (small enough to commit)
PLOT_SAMPLES = 400
GRID_SEEDS = 4  # image scales: seeds per prompt kept (as a PNG strip) for the sample grids


def load_run(run_dir: str | Path, prior_only: bool = False):
    """(backend with the run's final LoRA — or the bare prior —, its TrainConfig)."""
    run_dir = Path(run_dir)
    cfg = options_from_dict(TrainConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
    if not prior_only and not (run_dir / "done.json").exists():
        raise FileNotFoundError(f"run {run_dir} is not finished (no done.json): train it first")
    backend = build_backend(cfg)
    if prior_only:
        backend.set_adapter_enabled(False)
    else:
        backend.load_lora(run_dir / "final")
    return backend, cfg


@torch.no_grad()
def evaluate_toy2d(backend, cfg: TrainConfig, beta: float, num_samples: int, seed: int = 0) -> dict:
    """Distances of `num_samples` model samples to the exact tilted target and to the prior."""
    reward = build_reward(cfg.reward, **cfg.reward_options)
    target = reward.exact_target(backend.mixture, beta)
    seeds = [EVAL_SEED_OFFSET + i for i in range(num_samples)]
    x = rollout(backend, [""] * num_samples, seeds, cfg.sampler.num_steps, cfg.sampler.eta, cfg.sampler.guidance_scale)
    prior_samples, _ = backend.mixture.sample(num_samples, torch.Generator().manual_seed(seed + 1))
    masses = component_masses(x, backend.mixture)
    return {
        "reward_mean": reward(x, None).mean().item(),
        **distances_to_target(x, backend.mixture, target, seed),
        "energy_distance_prior": energy_distance(x.double(), prior_samples),
        "masses": [round(float(m), 4) for m in masses],
        "target_masses": [round(float(w), 4) for w in target.weights],
        "num_samples": num_samples,
        "beta": beta,
        # for the figures: the exact target's density and a few of the samples drawn against it
        "target": {k: [[round(v, 5) for v in row] if isinstance(row, list) else round(row, 5) for row in rows]
                   for k, rows in target.to_dict().items()},
        "samples": [[round(float(a), 3), round(float(b), 3)] for a, b in x[:PLOT_SAMPLES].tolist()],
    }


@torch.no_grad()
def evaluate_images(backend, cfg: TrainConfig, features, samples_per_prompt: int, fid_features=None) -> dict:
    """Reward, diversity and FID-to-prior on the held-out prompts.

    K images per prompt from the model and K from the prior (adapter off) with the same seeds,
    hence the same initial and per-step noise, so FID-to-prior measures what fine-tuning changed.
    Diversity uses ``features``; FID uses ``fid_features`` if given, else the same.
    """
    prompts = [p for p in cfg.eval_prompts for _ in range(samples_per_prompt)]
    seeds = [EVAL_SEED_OFFSET + s for _ in cfg.eval_prompts for s in range(samples_per_prompt)]
    reward = build_reward(cfg.reward, **cfg.reward_options).to(backend.device)
    sampler = dict(num_steps=cfg.sampler.num_steps, eta=cfg.sampler.eta, guidance_scale=cfg.sampler.guidance_scale)
    images = sample_images(backend, prompts, seeds, **sampler)
    with backend.adapter(False):
        prior_images = sample_images(backend, prompts, seeds, **sampler)
    f, f_prior = features(images), features(prior_images)
    distance = getattr(features, "distance", "cosine")
    g, g_prior = (fid_features(images), fid_features(prior_images)) if fid_features is not None else (f, f_prior)
    # for the sample-grid figure: the first GRID_SEEDS seeds of every prompt, the same in every run
    shown = [i for i, s in enumerate(seeds) if s - EVAL_SEED_OFFSET < GRID_SEEDS]
    return {
        "sample_strip": png_base64(images[shown]),
        "sample_strip_prompts": [prompts[i] for i in shown],
        "reward_mean": reward(images, prompts).mean().item(),
        "diversity": diversity(f, prompts, distance),
        **fid_to_prior(g, g_prior, prompts),
        "prior_reward_mean": reward(prior_images, prompts).mean().item(),
        "prior_diversity": diversity(f_prior, prompts, distance),
        "num_samples": len(seeds),
    }


def evaluate_run(
    run_dir: str | Path, out: str | Path, beta: float | None = None, num_samples: int = 4000,
    prior_only: bool = False, features: str | None = None, fid_features: str | None = None,
) -> dict:
    """Metrics of a finished run (or of its prior) as a JSON file. toy2d needs ``beta``; tiny and
    sd15 the feature extractors' specs (:func:`nabla.metrics.features.build_features`):
    ``features`` for diversity and FID, ``fid_features`` for FID instead where given."""
    # the extractors first: missing models, all named at once, stop it before the pipeline loads
    specs = [spec for spec in (features, fid_features) if spec]
    check_available([model for spec in specs for model in feature_models(spec)])
    diversity_net, fid_net = (build_features(spec) if spec else None for spec in (features, fid_features))
    if fid_net is None and getattr(diversity_net, "distance", "cosine") != "cosine":
        raise ValueError(f"{features} measures diversity only: name FID's features too (fid_features, e.g. inception)")
    backend, cfg = load_run(run_dir, prior_only)
    if cfg.scale == "toy2d":
        if beta is None:
            raise ValueError("toy2d evaluation needs beta, the β of the exact target p#·exp(βr)")
        measured = evaluate_toy2d(backend, cfg, beta, num_samples)
    else:
        if diversity_net is None:
            raise ValueError(f"{cfg.scale} evaluation needs feature extractors: tiny emoji=DIR (train-features), "
                             "sd15 dreamsim, clip or lpips, with fid_features inception")
        measured = evaluate_images(backend, cfg, diversity_net.to(backend.device), num_samples,
                                   fid_net.to(backend.device) if fid_net is not None else None)
    metrics = {
        "scale": cfg.scale, "reward": cfg.reward, "seed": cfg.seed,
        "method": "pretrained" if prior_only else cfg.method,
        **measured,
    }
    if not prior_only:
        done = json.loads((Path(run_dir) / "done.json").read_text())
        metrics["train_seconds"] = done["train_seconds"]
        metrics["diverged_at"] = done.get("diverged_at")  # None: all updates ran
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(metrics, indent=1))
    return metrics
