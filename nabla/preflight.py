"""What a command checks before any model loads or any folder is made: a user's mistake costs a second.

Each check raises a :class:`~nabla.errors.UserError` whose message is one line (one per missing
thing): an unknown method or reward (naming the known ones), a reward of another scale (naming the
scale it belongs to: ``Reward.scales``), a model folder this project builds that is not built yet
(naming the command and the workflow's rule that build it: a prior, the learned reward, the tiny
evaluation features), a hub model not in the local cache (naming the fetch command; a local path is
never named as a hub id). ``python -m nabla`` runs them for every command that takes a method, a
reward or a model (nabla.cli); the Trainer runs :func:`check_models` too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from nabla.config import SCALES
from nabla.errors import UserError
from nabla.hub import LocalFolder, check_available, check_folders, is_local_path

#: the file every built prior folder holds, per scale (None: any diffusers SD folder)
PRIOR_MARKERS = {"toy2d": "config.json", "tiny": "model_index.json", "sd15": "model_index.json",
                 None: "model_index.json"}
#: the scales whose prior this project pretrains (python -m nabla pretrain), with the workflow's rule
PRIOR_RULES = {"toy2d": "pretrain_toy2d_prior", "tiny": "pretrain_tiny_prior"}


# -- names ------------------------------------------------------------------------------------------
def check_method(name: str) -> None:
    """An unknown method: the known ones named."""
    from nabla.methods import method_class

    try:
        method_class(name)
    except ValueError as error:  # "unknown method '...'; known methods: ..."
        raise UserError(str(error)) from None


def rewards_of(scale: str) -> list[str]:
    """The registered rewards of a scale (``Reward.scales``)."""
    from nabla.rewards import REWARDS

    return sorted(name for name, cls in REWARDS.items() if scale in cls.scales)


def check_reward(name: str, scale: str | None = None) -> None:
    """An unknown reward (the known ones named, by scale), or one of another scale than ``scale``."""
    from nabla.rewards import REWARDS

    if name not in REWARDS:
        known = "; ".join(f"{s}: {', '.join(rewards_of(s))}" for s in SCALES)
        raise UserError(f"unknown reward '{name}'; known rewards: {known}")
    scales = REWARDS[name].scales
    if scale is not None and scales and scale not in scales:
        raise UserError(f"reward '{name}' belongs to the {' and '.join(scales)} scale{'s' * (len(scales) > 1)}, "
                        f"not {scale} (the {scale} rewards: {', '.join(rewards_of(scale))})")


# -- model folders and hub models ---------------------------------------------------------------------
def prior_folder(model: str | Path, scale: str | None) -> LocalFolder | None:
    """A prior given as a local path, with what builds it (None: a hub id, looked up in the cache).
    ``scale=None``: any diffusers SD-shaped folder (``sample``, ``prior-quality``)."""
    if scale != "toy2d" and not is_local_path(model):  # toy2d priors are folders only
        return None
    path, built = str(model), scale or "tiny"  # the SD-shaped folders this project builds are tiny priors
    if built in PRIOR_RULES:
        default = f"runs/{built}/prior"
        target = f", target {default}/{PRIOR_MARKERS[built]}" if os.path.normpath(path) == default else ""
        build = (f"build it with `python -m nabla pretrain --scale {built} --out {path}` "
                 f"(the workflow's rule {PRIOR_RULES[built]}{target})")
    else:
        build = "give a diffusers model folder, or a hub id (org/name) fetched with `python -m nabla fetch-models`"
    return LocalFolder(path, PRIOR_MARKERS[scale], f"the {scale} prior" if scale else "the model folder", build)


def check_model(model: str | Path, scale: str | None = None, config: str | None = None) -> None:
    """A prior (or any SD-shaped model, ``scale=None``): a built local folder, or a cached hub id."""
    folder = prior_folder(model, scale)
    if folder is not None:
        check_folders([folder])
    else:
        from nabla.models.sd import pipeline_model  # imports diffusers: only for a hub id

        check_available([pipeline_model(model)], config)


def reward_folders(name: str, options: dict[str, Any]) -> list[LocalFolder]:
    """The folders this project builds that the reward loads (the learned reward's classifier)."""
    from nabla.rewards import reward_class, reward_options

    cls = reward_class(name)
    known = reward_options(cls)
    return cls.local_folders(**{k: v for k, v in options.items() if k in known})


def check_features(specs: Iterable[str | None]) -> None:
    """Every folder and hub model the named evaluation feature extractors load."""
    from nabla.metrics.features import feature_folders, feature_models

    try:
        specs = [s for s in specs if s]
        folders = [f for s in specs for f in feature_folders(s)]
        models = [m for s in specs for m in feature_models(s)]
    except ValueError as error:  # "unknown feature extractor ..."
        raise UserError(str(error)) from None
    check_folders(folders)
    check_available(models)


def check_models(cfg, config: str | None = None) -> None:
    """Every model a run (nabla.config.TrainConfig) loads is here: its prior, the reward's folders
    (each missing one named with what builds it), then the hub models (all missing ones at once)."""
    from nabla.config import required_models

    prior = prior_folder(cfg.model, cfg.scale)
    check_folders(([prior] if prior else []) + reward_folders(cfg.reward, cfg.reward_options))
    models = required_models(cfg)
    if cfg.scale == "tiny" and not is_local_path(cfg.model):  # a tiny prior from the hub cache
        from nabla.models.sd import pipeline_model

        models.insert(0, pipeline_model(cfg.model))
    check_available(models, config)


def check_run(cfg, config: str | None = None) -> None:
    """A run's method (if any), its reward and the reward's scale, then every model it loads."""
    if cfg.method is not None:
        check_method(cfg.method)
    check_reward(cfg.reward, cfg.scale)
    check_models(cfg, config)


def checked_config(path: str | Path | None, method: str | None, reward: str, seed: int = 0,
                   settings: dict | None = None, **overrides):
    """``nabla.config.load_train_config``'s TrainConfig, with the names checked before the config
    is read and every model after (:func:`check_run`). ``method=None``: the prior's evaluation."""
    from nabla.config import load_train_config

    if method is not None:
        check_method(method)
    check_reward(reward)
    if path is not None and not Path(path).is_file():
        raise UserError(f"no training config {path} (a scale's YAML: config/train/<scale>.yaml)")
    cfg = load_train_config(path, method, reward, seed, settings, **overrides)
    check_run(cfg, None if path is None else str(path))
    return cfg


def finished_run(run_dir: str | Path):
    """A finished run folder's TrainConfig, with every model it loads checked."""
    import yaml

    from nabla.config import TrainConfig
    from nabla.options import options_from_dict

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml): `python -m nabla train ... --out {run}` "
                        "makes one")
    if not (run / "done.json").is_file():
        raise UserError(f"run {run} is not finished (no done.json): rerun its `python -m nabla train` to finish it")
    cfg = options_from_dict(TrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    check_run(cfg)
    return cfg
