"""A run's configuration: the TrainConfig dataclass and how a scale's YAML resolves into it.

A scale's training YAML (``config/train/<scale>.yaml``) holds the shared protocol at the top
level, each method's settings under ``methods:`` (its options, and the TrainConfig keys its release
sets otherwise: lr, lora_rank, ...), each reward's options under ``rewards:``, and what differs by
reward under ``per_reward:``. One run (method, reward, seed) resolves as :func:`run_settings`
says; the workflow adds its per-scale ``budget`` and, for tuning and the tuned protocol, a flat
``settings`` dict of chosen values (a key of TrainConfig sets that key, any other key the method's
option of that name).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from nabla.data.prompt_sets import parse_prompts
from nabla.data.prompts import EVAL_PROMPTS, FINETUNE_PROMPTS, VALIDATION_PROMPTS
from nabla.hub import HubModel
from nabla.methods import SamplerConfig
from nabla.options import Checked, ConfigError, options_from_dict, problem

SCALES = ("toy2d", "tiny", "sd15")
#: the prompt splits a run is evaluated on during training (evaluation seeds 0..K−1 on the
#: evaluation prompts, VALIDATION_SEED_START + 0..K−1 on the validation prompts: at toy2d,
#: whose one prompt is "", the seed ranges are what keeps the splits apart)
SPLITS = ("validation", "evaluation")
VALIDATION_SEED_START = 500_000


@dataclass
class TrainConfig(Checked):
    """Everything a run needs besides the method's and reward's own options.

    Args:
        scale: "toy2d", "tiny" or "sd15".
        model: the prior's folder, or a hub id (looked up in the local cache only).
        method: a registered method's name (``python -m nabla train --help``).
        reward: a registered reward's name.
        seed: the run's seed (its training rounds' noise and its networks' initialisation).
        rounds: the shared budget: sampling rounds of ``trajectories_per_round`` fresh trajectories
            each, so every method sees the same trajectories; a method takes its own optimiser steps
            per round.
        trajectories_per_round: fresh trajectories sampled each round (per process).
        sampler: the sampler every method uses (``SamplerConfig``).
        prompts: the training prompts.
        validation_prompts: the prompts every choice is made on (tuning, matched-reward reference).
        eval_prompts: the evaluation prompts, the tables' only.
        eval_samples_per_prompt: samples per prompt of the dense evaluation.
        eval_every: rounds between dense evaluations on each of ``eval_splits`` (0: only at the
            start and the end): the reward, and at toy2d the distances to the targets, at the image
            scales diversity and FID-to-prior on ``eval_features`` (``eval_fid_features``).
        eval_splits: the splits evaluated during training ("validation", "evaluation").
        eval_features: the image scales' feature extractor of diversity (and of FID unless
            ``eval_fid_features``), ``NAME`` or ``NAME=MODEL``.
        eval_fid_features: the image scales' feature extractor of FID-to-prior.
        eval_target_beta: toy2d: the β of the tilted target p#·exp(βr) every run is measured against.
        lora_rank: the LoRA rank of the fine-tuned denoiser.
        lora_alpha: the LoRA scale's numerator (default: the rank).
        lr: the denoiser's (LoRA's) learning rate.
        flow_lr: the learning rate of a method's own networks (flow, value or log Z).
        weight_decay: AdamW's weight decay of the LoRA parameters.
        flow_weight_decay: AdamW's weight decay of a method's own networks.
        lr_schedule: "constant", or "cosine" (decay to 0 over the budget).
        grad_clip: the gradient norm each optimiser step is clipped to.
        checkpoint_every: rounds between checkpoints (a killed run resumes from the last).
        log_every: rounds between printed summaries.
        device: "cpu" or "cuda".
        frozen_dtype: SD scales: the frozen UNet's and text encoder's dtype ("float32" or "bfloat16";
            the VAE, LoRA, flow network and every loss stay float32).
        gradient_checkpointing: SD scales: UNet gradient checkpointing.
        on_nonfinite: on a NaN/inf reward, loss or gradient: "fail" the run, or "stop" it there and
            finish with the last finite weights, recording the divergence in done.json (a
            comparison keeps the result).
        tracker: "none", or "tensorboard": mirror train_log.csv and eval_log.csv as TensorBoard scalars
            in the run folder's ``tensorboard/`` (``pip install -e '.[track]'``; nabla.tracking).
        method_options: the method's ``Options`` fields.
        reward_options: the reward's constructor options.
    """

    scale: str = "tiny"
    model: str = "runs/tiny/prior"
    method: str = "residual_nabla_db"
    reward: str = "colorfulness"
    seed: int = 0
    rounds: int = 100
    trajectories_per_round: int = 64
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    prompts: tuple[str, ...] = FINETUNE_PROMPTS
    validation_prompts: tuple[str, ...] = VALIDATION_PROMPTS
    eval_prompts: tuple[str, ...] = EVAL_PROMPTS
    eval_samples_per_prompt: int = 8
    eval_every: int = 10
    eval_splits: tuple[str, ...] = SPLITS
    eval_features: str | None = None
    eval_fid_features: str | None = None
    eval_target_beta: float | None = None
    lora_rank: int = 8
    lora_alpha: float | None = None
    lr: float = 1e-3
    flow_lr: float = 1e-3
    weight_decay: float = 1e-4
    flow_weight_decay: float = 1e-2
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    checkpoint_every: int = 10
    log_every: int = 10
    device: str = "cpu"
    frozen_dtype: str = "float32"
    gradient_checkpointing: bool = False
    on_nonfinite: str = "fail"
    tracker: str = "none"
    method_options: dict = field(default_factory=dict)
    reward_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.sampler, dict):
            self.sampler = options_from_dict(SamplerConfig, self.sampler)
        super().__post_init__()

    def problems(self) -> list[str]:
        found = [problem(k, getattr(self, k), "must be positive")
                 for k in ("rounds", "trajectories_per_round", "checkpoint_every", "eval_samples_per_prompt")
                 if getattr(self, k) <= 0]
        found += [problem(k, getattr(self, k), "must be non-negative") for k in ("lr", "flow_lr", "eval_every")
                  if getattr(self, k) < 0]
        choices = {"scale": SCALES, "on_nonfinite": ("fail", "stop"), "frozen_dtype": ("float32", "bfloat16"),
                   "lr_schedule": ("constant", "cosine"), "tracker": ("none", "tensorboard")}
        found += [problem(k, getattr(self, k), f"must be one of {', '.join(v)}") for k, v in choices.items()
                  if getattr(self, k) not in v]
        if set(self.eval_splits) - set(SPLITS):
            found.append(problem("eval_splits", self.eval_splits, f"each must be one of {', '.join(SPLITS)}"))
        if self.scale == "toy2d" and (self.frozen_dtype != "float32" or self.gradient_checkpointing):
            found.append(problem("frozen_dtype", self.frozen_dtype, "frozen_dtype and gradient_checkpointing apply to "
                                 "the SD scales, not toy2d"))
        return found

    def split_prompts(self, split: str) -> tuple[str, ...]:
        return self.validation_prompts if split == "validation" else self.eval_prompts


def split_seeds(split: str, count: int) -> list[int]:
    """The fixed noise seeds of a split's K samples per prompt (never a training round's)."""
    start = VALIDATION_SEED_START if split == "validation" else 0
    return list(range(start, start + count))


#: the config keys that take a list of prompts or a prompt set (nabla.data.prompt_sets)
PROMPT_KEYS = ("prompts", "validation_prompts", "eval_prompts")
TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def apply_settings(raw: dict, settings: dict | None) -> dict:
    """``raw`` run settings with chosen values: a TrainConfig key is set at the top level, any
    other key is the method's option of that name (a grid point, or a selection)."""
    raw = dict(raw)
    options = dict(raw.get("method_options") or {})
    for key, value in (settings or {}).items():
        if key in TRAIN_KEYS:
            raw[key] = value
        else:
            options[key] = value
    raw["method_options"] = options
    return raw


def run_settings(path: str | Path | None, method: str | None, reward: str, seed: int, settings: dict | None = None,
                 **overrides) -> dict:
    """A run's settings from a scale's YAML, before prompt sets are read: the top-level keys; then
    ``per_reward[reward]``'s top-level keys; then ``overrides`` (None: not given); then the method's
    settings, ``methods[method]`` and ``per_reward[reward].methods[method]``; then the chosen
    ``settings`` (both through :func:`apply_settings`); ``rewards[reward]`` are the reward's options.
    ``method=None``: no method's settings (the shared protocol alone, as the prior is evaluated)."""
    raw = dict((yaml.safe_load(Path(path).read_text()) if path else {}) or {})
    methods, rewards = raw.pop("methods", {}) or {}, raw.pop("rewards", {}) or {}
    per_reward = dict((raw.pop("per_reward", {}) or {}).get(reward) or {})
    reward_methods = per_reward.pop("methods", {}) or {}
    raw.update(per_reward)
    raw.update(method=method, reward=reward, seed=seed, **{k: v for k, v in overrides.items() if v is not None})
    raw = apply_settings(raw, {**(methods.get(method) or {}), **(reward_methods.get(method) or {})})
    raw["reward_options"] = {**(rewards.get(reward) or {}), **raw.get("reward_options", {})}
    return apply_settings(raw, settings)


def load_train_config(path: str | Path | None, method: str | None, reward: str, seed: int, settings: dict | None = None,
                      **overrides) -> TrainConfig:
    """A run's config (:func:`run_settings`), with any prompt set read from the local cache."""
    raw = run_settings(path, method, reward, seed, settings, **overrides)
    for key in PROMPT_KEYS:
        if (prompt_set := parse_prompts(raw.get(key))) is not None:
            raw[key] = prompt_set.load()
    return options_from_dict(TrainConfig, raw)


def check_run_settings(raw: dict) -> list[str]:
    """Every problem of a run's settings without loading anything: the TrainConfig (prompt sets
    as specs, not read), the method's options and the reward's (names and constructor options)."""
    from nabla.methods import method_class
    from nabla.rewards import reward_class, reward_options

    raw = dict(raw)
    found = []
    for key in PROMPT_KEYS:
        try:
            if parse_prompts(raw.get(key)) is not None:
                raw[key] = ()  # a prompt-set spec is checked, its files are not read here
        except ValueError as error:
            found.append(problem(key, raw.get(key), str(error)))
            raw[key] = ()
    try:
        options_from_dict(TrainConfig, raw)
    except ConfigError as error:
        found += error.problems
    # the method's and the reward's options are checked even where the TrainConfig has problems
    method, reward = raw.get("method"), raw.get("reward")
    try:
        options_from_dict(method_class(method).Options, raw.get("method_options") or {})
    except ConfigError as error:
        found += [f"methods.{method}: {p}" for p in error.problems]
    except ValueError as error:
        found.append(problem("method", method, str(error)))
    try:
        known = reward_options(reward_class(reward))
        found += [f"rewards.{reward}: unknown option {k!r} (it takes: {', '.join(known) or 'none'})"
                  for k in sorted(set(raw.get("reward_options") or {}) - set(known))]
    except ValueError as error:
        found.append(problem("reward", reward, str(error)))
    return found


# -- comparing a run folder's config with this run's ----------------------------------------------
#: config keys a resumed run may change (they alter no number the run produces)
RESUMABLE_CHANGES = ("log_every", "device", "tracker")


def config_changes(saved: dict, current: dict) -> list[str]:
    """Keys (dotted for method/reward options) whose values differ between two resolved configs."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{key}.{k}" for k in config_changes(old, new)]
        elif old != new:
            changed.append(key)
    return changed


# -- the pretrained models a config needs ---------------------------------------------------------
def required_models(cfg: TrainConfig) -> list[HubModel]:
    """The pretrained models the run loads from the hub cache: SD at sd15, and the reward's."""
    from nabla.rewards import reward_class

    models = []
    if cfg.scale == "sd15":  # diffusers' pipeline module takes seconds to import: only where it is needed
        from nabla.models.sd import pipeline_model

        models.append(pipeline_model(cfg.model))
    return models + reward_class(cfg.reward).required_models(**cfg.reward_options)


def config_models(path: str | Path, features: Iterable[str] = (), rewards: Iterable[str] | None = None) -> list:
    """Every model and prompt file a config's runs load: a training config (``scale:`` at the top,
    each reward under ``rewards:``, or only ``rewards`` where given) or a workflow config (each
    scale in ``scales`` with its ``train_config``, ``rewards`` and its evaluation's feature
    extractors), plus the extractors named in ``features``."""
    from nabla.metrics.features import feature_models

    raw = yaml.safe_load(Path(path).read_text()) or {}
    features = list(features)
    if "scale" in raw:
        runs = [(path, list(rewards or raw.get("rewards") or {}) or [raw.get("reward", TrainConfig.reward)])]
    else:
        scales = raw.get("scales") or [k for k, v in raw.items() if isinstance(v, dict) and "train_config" in v]
        runs = [(raw[s]["train_config"], raw[s]["rewards"]) for s in scales if "train_config" in raw.get(s, {})]
        evaluations = [raw[s].get("evaluation") or {} for s in scales if isinstance(raw.get(s), dict)]
        features += [e[key] for e in evaluations for key in ("features", "fid_features") if key in e]
    models = []
    for train_config, run_rewards in runs:
        for reward in run_rewards:
            settings = run_settings(train_config, TrainConfig.method, reward, 0)
            prompt_sets = {key: parse_prompts(settings.get(key)) for key in PROMPT_KEYS}
            models += [m for s in prompt_sets.values() if s is not None for m in s.required_models()]
            settings.update({key: () for key, s in prompt_sets.items() if s is not None})  # not read here
            models += required_models(options_from_dict(TrainConfig, settings))
    for spec in features:
        models += feature_models(spec)
    return list(dict.fromkeys(models))


def resolved(cfg: TrainConfig, method_options: Any) -> dict[str, Any]:
    """The run's config as written to its folder: every key, the method's options with defaults."""
    values = dataclasses.asdict(cfg)
    values["method_options"] = dataclasses.asdict(method_options)
    return values
