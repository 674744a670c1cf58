"""Measuring a model: during training on each prompt split (dense), and once at the end.

Every measurement uses the split's fixed seeds (:func:`nabla.config.split_seeds`), so every
method and the prior are compared on the same noise.

* toy2d, where the answer is known: the mean reward and the energy distance (ED) of the samples
  to each exact target: the tilted prior p#·exp(βr) at the evaluation's β (with the mode-mass
  TV), the method's own target (:attr:`nabla.methods.Method.target`: the tilt at its own β, or
  the reward-only exp(β_eff r) where that is normalisable) and the prior itself;
* tiny and sd15: the reward, and on a feature network's features the diversity and the
  FID-to-prior against the prior's images from the same noise (``nabla.metrics``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import yaml

from nabla.config import TrainConfig, split_seeds
from nabla.methods import method_class
from nabla.metrics.images import diversity, fid_to_prior
from nabla.metrics.toy2d import MixtureReference, component_masses, mass_tv
from nabla.options import options_from_dict
from nabla.report.grids import png_base64
from nabla.rewards import build_reward
from nabla.sampling import rollout, sample_images

#: samples stored in a metrics file for the sample figures (small enough to commit)
PLOT_SAMPLES = 400
GRID_SEEDS = 4  # image scales: seeds per prompt kept (as a PNG strip) for the sample grids
NAN = float("nan")


def split_batch(cfg: TrainConfig, split: str, samples_per_prompt: int) -> tuple[list[str], list[int]]:
    """The prompts and seeds of a split: every prompt with the split's first K seeds."""
    prompts = cfg.split_prompts(split)
    seeds = split_seeds(split, samples_per_prompt)
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


def own_target(reward, prior, method: str, method_options, sample_shape):
    """The exact target a method's optimum is (a GaussianMixture), or None: no method (the prior),
    no target (a reward maximiser), a reward-only exp(β r) that is not normalisable (linear r), or
    κ ≠ 1."""
    if method_options is None:
        return None
    cls = method_class(method)
    beta = cls.target_beta(method_options, sample_shape)
    if beta is None:  # e.g. DPOK's ε-space KL: no tilt at all
        return None
    if cls.target == "tilted" and getattr(method_options, "pretrained_strength", 1.0) == 1.0:
        return reward.exact_target(prior, beta)
    if cls.target == "reward_only":
        try:
            return reward.reward_only_target(beta)
        except ValueError:
            return None
    return None


def reward_moments(rewards: torch.Tensor) -> dict[str, float]:
    """Mean, sample std and the mean's standard error of one evaluation's rewards."""
    std = rewards.std().item()
    return {"reward_mean": rewards.mean().item(), "reward_std": std, "reward_sem": std / len(rewards) ** 0.5}


class Toy2dEvaluator:
    """toy2d metrics of a backend's samples against the exact targets of one run.

    Every target is a Gaussian mixture, and the energy distance to it is taken against the mixture
    itself (:class:`nabla.metrics.toy2d.MixtureReference`): only the samples' side is estimated.
    """

    def __init__(self, cfg: TrainConfig, backend, reward, method_options, samples: int):
        self.cfg, self.backend, self.reward, self.samples = cfg, backend, reward, samples
        prior = backend.mixture
        self.tilted = reward.exact_target(prior, cfg.eval_target_beta) if cfg.eval_target_beta is not None else None
        self.own = own_target(reward, prior, cfg.method, method_options, backend.sample_shape)
        self.references = {"energy_distance_prior": MixtureReference(prior)}
        if self.tilted is not None:
            self.references["energy_distance_target"] = MixtureReference(self.tilted)
        if self.own is not None:
            self.references["energy_distance_own_target"] = MixtureReference(self.own)

    @torch.no_grad()
    def sample(self, split: str) -> torch.Tensor:
        sampler = self.cfg.sampler
        prompts, seeds = split_batch(self.cfg, split, self.samples)
        return rollout(self.backend, prompts, seeds, sampler.num_steps, sampler.eta, sampler.guidance_scale)

    def measure(self, x: torch.Tensor) -> dict[str, float]:
        rewards = self.reward(x, None)
        row = {**reward_moments(rewards),
               "energy_distance_target": NAN, "mass_tv_target": NAN, "energy_distance_own_target": NAN}
        first, *others = self.references.values()
        row.update(zip(self.references, first.energy_distances(x, *others)))
        if self.tilted is not None:
            row["mass_tv_target"] = mass_tv(x, self.backend.mixture, self.tilted.weights)
        return row

    def __call__(self, split: str) -> dict[str, float]:
        return self.measure(self.sample(split))


class ImageEvaluator:
    """Reward, and (given feature extractors) diversity and FID-to-prior of a backend's images."""

    def __init__(self, cfg: TrainConfig, backend, reward, samples_per_prompt: int, features=None, fid_features=None):
        self.cfg, self.backend, self.reward, self.samples = cfg, backend, reward, samples_per_prompt
        self.features, self.fid_features = features, fid_features
        self._prior: dict[str, tuple] = {}  # split → the prior's images' features (the same every time)

    @classmethod
    def from_specs(cls, cfg: TrainConfig, backend, reward, samples_per_prompt: int, features: str | None,
                   fid_features: str | None) -> "ImageEvaluator":
        """With extractors named by specs (nabla.metrics.features), every missing model named first."""
        from nabla.metrics.features import build_features

        check_features(features, fid_features)
        nets = [build_features(spec).to(backend.device) if spec else None for spec in (features, fid_features)]
        if nets[0] is not None and nets[1] is None and getattr(nets[0], "distance", "cosine") != "cosine":
            raise ValueError(f"{features} measures diversity only: name FID's features too (fid_features, e.g. inception)")
        return cls(cfg, backend, reward, samples_per_prompt, *nets)

    def _embed(self, images: torch.Tensor) -> tuple:
        f = self.features(images)
        return f, (self.fid_features(images) if self.fid_features is not None else f)

    @torch.no_grad()
    def images(self, split: str) -> tuple[torch.Tensor, list[str], list[int]]:
        sampler = self.cfg.sampler
        prompts, seeds = split_batch(self.cfg, split, self.samples)
        images = sample_images(self.backend, prompts, seeds, num_steps=sampler.num_steps, eta=sampler.eta,
                               guidance_scale=sampler.guidance_scale)
        return images, prompts, seeds

    def prior_features(self, split: str) -> tuple:
        if split not in self._prior:
            with self.backend.adapter(False):
                self._prior[split] = self._embed(self.images(split)[0])
        return self._prior[split]

    @torch.no_grad()
    def measure(self, images: torch.Tensor, prompts: list[str], split: str) -> dict[str, float]:
        rewards = self.reward(images, prompts)
        row = reward_moments(rewards)
        if self.features is not None:
            (f, g), (_, g_prior) = self._embed(images), self.prior_features(split)
            row["diversity"] = diversity(f, prompts, getattr(self.features, "distance", "cosine"))
            row.update(fid_to_prior(g, g_prior, prompts))
        return row

    def __call__(self, split: str) -> dict[str, float]:
        images, prompts, _ = self.images(split)
        return self.measure(images, prompts, split)


def check_features(*specs: str | None) -> None:
    """Every folder and model the named feature extractors load is here (one UserError naming all)."""
    from nabla.preflight import check_features as check

    check(specs)


def dense_evaluator(cfg: TrainConfig, backend, reward, method_options):
    """What the trainer measures every ``eval_every`` rounds on each of ``cfg.eval_splits``."""
    if cfg.scale == "toy2d":
        return Toy2dEvaluator(cfg, backend, reward, method_options, cfg.eval_samples_per_prompt)
    return ImageEvaluator.from_specs(cfg, backend, reward, cfg.eval_samples_per_prompt, cfg.eval_features,
                                     cfg.eval_fid_features)


# -- the final evaluation of a finished run (or of the prior) -----------------------------------
def load_run(run_dir: str | Path):
    """(backend with the run's final LoRA, its TrainConfig) of a finished run."""
    from nabla.trainer import build_backend

    run_dir = Path(run_dir)
    cfg = options_from_dict(TrainConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
    if not (run_dir / "done.json").exists():
        raise FileNotFoundError(f"run {run_dir} is not finished (no done.json): train it first")
    backend = build_backend(cfg)
    backend.load_lora(run_dir / "final")
    return backend, cfg


def method_options_of(cfg: TrainConfig):
    return options_from_dict(method_class(cfg.method).Options, cfg.method_options)


@torch.no_grad()
def evaluate_toy2d(backend, cfg: TrainConfig, num_samples: int, method_options) -> dict:
    """The evaluation split's metrics at ``num_samples`` samples, with the mode masses and, for the
    figures, the tilted target's parameters and some of the samples."""
    reward = build_reward(cfg.reward, **cfg.reward_options)
    evaluator = Toy2dEvaluator(cfg, backend, reward, method_options, num_samples)
    x = evaluator.sample("evaluation")
    metrics = {**evaluator.measure(x), "masses": [round(float(m), 4) for m in component_masses(x, backend.mixture)]}
    if evaluator.tilted is not None:
        metrics["target_masses"] = [round(float(w), 4) for w in evaluator.tilted.weights]
        metrics["target"] = {k: [[round(v, 5) for v in row] if isinstance(row, list) else round(row, 5) for row in rows]
                             for k, rows in evaluator.tilted.to_dict().items()}
    metrics.update(num_samples=num_samples, beta=cfg.eval_target_beta,
                   samples=[[round(float(a), 3), round(float(b), 3)] for a, b in x[:PLOT_SAMPLES].tolist()])
    return metrics


@torch.no_grad()
def evaluate_images(backend, cfg: TrainConfig, samples_per_prompt: int, features: str | None,
                    fid_features: str | None) -> dict:
    """The evaluation split's reward, diversity and FID-to-prior (K images per prompt, the prior's
    from the same noise), and a strip of the first seeds' images for the sample grids."""
    reward = build_reward(cfg.reward, **cfg.reward_options).to(backend.device)
    evaluator = ImageEvaluator.from_specs(cfg, backend, reward, samples_per_prompt, features, fid_features)
    if evaluator.features is None:
        raise ValueError(f"{cfg.scale} evaluation needs feature extractors: tiny emoji=DIR (train-features), "
                         "sd15 dreamsim, clip or lpips, with fid_features inception")
    images, prompts, seeds = evaluator.images("evaluation")
    shown = [i for i, s in enumerate(seeds) if s < GRID_SEEDS]
    return {
        **evaluator.measure(images, prompts, "evaluation"),
        "sample_strip": png_base64(images[shown]),
        "sample_strip_prompts": [prompts[i] for i in shown],
        "num_samples": len(seeds),
    }


def evaluate_backend(backend, cfg: TrainConfig, num_samples: int, features: str | None, fid_features: str | None,
                     method_options) -> dict:
    """A backend's metrics as the tables hold them: toy2d ``num_samples`` samples, else
    ``num_samples`` images per evaluation prompt. ``method_options`` None: the prior (no own target)."""
    if cfg.scale == "toy2d":
        return evaluate_toy2d(backend, cfg, num_samples, method_options)
    return evaluate_images(backend, cfg, num_samples, features, fid_features)


def evaluate_run(run_dir: str | Path, out: str | Path | None = None, num_samples: int = 4000,
                 features: str | None = None, fid_features: str | None = None) -> dict:
    """Metrics of a finished run on the evaluation split, also written to ``out``."""
    check_features(features, fid_features)  # every missing model named before the run loads
    backend, cfg = load_run(run_dir)
    done = json.loads((Path(run_dir) / "done.json").read_text())
    metrics = {"scale": cfg.scale, "reward": cfg.reward, "seed": cfg.seed, "method": cfg.method,
               **evaluate_backend(backend, cfg, num_samples, features, fid_features, method_options_of(cfg)),
               **{k: done.get(k) for k in ("rounds", "updates", "trajectories", "train_seconds", "diverged_at")}}
    if out is not None:
        write_json(out, metrics)
    return metrics


def evaluate_prior(config: str | Path, reward: str, out: str | Path | None = None, num_samples: int = 4000,
                   features: str | None = None, fid_features: str | None = None, **overrides) -> dict:
    """The prior's metrics on the evaluation split of a scale's training config, as a run's are
    measured (the same sampler, prompts, seeds and reward; no run folder needed).

    The config is resolved without any method (``method=None``): the scale's shared protocol and
    the reward's section alone, so no method's settings reach the prior's row.
    """
    from nabla.config import load_train_config
    from nabla.trainer import build_backend

    check_features(features, fid_features)
    cfg = load_train_config(config, None, reward, 0, **overrides)
    backend = build_backend(cfg, with_lora=False)
    metrics = {"scale": cfg.scale, "reward": cfg.reward, "method": "pretrained",
               **evaluate_backend(backend, cfg, num_samples, features, fid_features, None)}
    if out is not None:
        write_json(out, metrics)
    return metrics


def finite_or_none(value):
    """JSON has no NaN: a metric that does not exist for a run is null."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(path: str | Path, value) -> Path:
    """Write strict JSON (NaN as null), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_or_none(value), indent=1, allow_nan=False))
    return path
