"""The one training loop every method runs through.

Per round: sample a batch of trajectories with the current policy (``Method.collect``), split a
batch (this round's, or the previous round's for methods that train one round behind) into
updates of accumulated micro-batches (``Method.plan``), and take one AdamW step per update with
gradient clipping per parameter group. Everything random is a function of (seed, round), so a
run killed after a checkpoint and resumed reproduces the uninterrupted run exactly on CPU.

A run folder holds ``config.yaml`` (the resolved config), ``train_log.csv`` (one row per update),
``eval_log.csv`` (held-out reward at fixed prompts and seeds), ``checkpoint/`` (the latest:
LoRA, extra modules, optimiser, pending batch — safetensors — and ``state.json``), and, once
finished, ``final/`` and ``done.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from nabla import distributed
from nabla.data.prompt_sets import parse_prompts
from nabla.hub import HubModel, check_available
from nabla.methods import Method, Rollouts, SamplerConfig, method_class, options_from_dict
from nabla.metrics.toy2d import distances_to_target
from nabla.models.base import DiffusionBackend
from nabla.rewards import build_reward, reward_class


class NonFiniteError(RuntimeError):
    """A reward, loss or gradient became NaN/inf: the run stops before any checkpoint of it."""


@dataclass
class TrainConfig:
    """Everything a run needs besides the method's and reward's own options."""

    scale: str = "tiny"  # "toy2d", "tiny" or "sd15"
    model: str = "runs/tiny/prior"  # prior folder or hub id (local cache only)
    method: str = "residual_nabla_db"
    reward: str = "colorfulness"
    seed: int = 0
    updates: int = 200  # optimiser steps
    trajectories_per_round: int = 64
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    prompts: tuple[str, ...] = ("cat", "heart", "flag", "clock", "hand")
    eval_prompts: tuple[str, ...] = ("smiling", "moon", "star", "circle")
    eval_samples_per_prompt: int = 8
    eval_every: int = 25  # updates; 0 = only at start and end
    # toy2d: also log the distance of the evaluation samples to the exact target p#·exp(βr) for
    # this β (rewards with a closed-form tilt only), so curves show convergence, not only reward.
    eval_target_beta: float | None = None
    lora_rank: int = 8
    lora_alpha: float | None = None  # default: = rank
    lr: float = 1e-3
    flow_lr: float = 1e-3
    weight_decay: float = 1e-4
    flow_weight_decay: float = 1e-2
    lr_schedule: str = "constant"  # or "cosine" (decay to 0 over `updates`)
    grad_clip: float = 1.0
    checkpoint_every: int = 50  # updates
    log_every: int = 10  # updates between printed summaries
    device: str = "cpu"
    # SD scales: dtype of the frozen UNet and text encoder ("float32" or "bfloat16"; the VAE,
    # LoRA, flow network and every loss stay float32), and UNet gradient checkpointing.
    frozen_dtype: str = "float32"
    gradient_checkpointing: bool = False
    # A NaN/inf reward, loss or gradient: "fail" the run, or "stop" it there and finish with the
    # last finite weights, recording the divergence in done.json (a comparison keeps the result).
    on_nonfinite: str = "fail"
    method_options: dict = field(default_factory=dict)
    reward_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.sampler, dict):
            self.sampler = options_from_dict(SamplerConfig, self.sampler)
        for name in ("updates", "trajectories_per_round", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "flow_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.on_nonfinite not in ("fail", "stop"):
            raise ValueError(f"on_nonfinite must be 'fail' or 'stop', got {self.on_nonfinite!r}")
        if self.frozen_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"frozen_dtype must be 'float32' or 'bfloat16', got {self.frozen_dtype!r}")
        if self.scale == "toy2d" and (self.frozen_dtype != "float32" or self.gradient_checkpointing):
            raise ValueError("frozen_dtype and gradient_checkpointing apply to the SD scales, not toy2d")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")


#: the config keys that take a list of prompts or a prompt set (nabla.data.prompt_sets)
PROMPT_KEYS = ("prompts", "eval_prompts")


def run_settings(path: str | Path | None, method: str, reward: str, seed: int, **overrides) -> dict:
    """A run's settings from a scale's YAML, before prompt sets are read: the top-level keys; then
    ``per_reward[reward]`` (top-level keys, and ``methods`` merged into each method's options);
    then ``methods[method]`` as the method's options and ``rewards[reward]`` as the reward's; then
    ``overrides`` (None: not given)."""
    raw = dict((yaml.safe_load(Path(path).read_text()) if path else {}) or {})
    methods, rewards = raw.pop("methods", {}) or {}, raw.pop("rewards", {}) or {}
    per_reward = dict((raw.pop("per_reward", {}) or {}).get(reward) or {})
    reward_methods = per_reward.pop("methods", {}) or {}
    raw.update(per_reward)
    raw.update(method=method, reward=reward, seed=seed, **{k: v for k, v in overrides.items() if v is not None})
    raw["method_options"] = {
        **(methods.get(method) or {}), **(reward_methods.get(method) or {}), **raw.get("method_options", {})
    }
    raw["reward_options"] = {**(rewards.get(reward) or {}), **raw.get("reward_options", {})}
    return raw


def load_train_config(path: str | Path | None, method: str, reward: str, seed: int, **overrides) -> TrainConfig:
    """A run's config (:func:`run_settings`), with any prompt set read from the local cache."""
    raw = run_settings(path, method, reward, seed, **overrides)
    for key in PROMPT_KEYS:
        if (prompt_set := parse_prompts(raw.get(key))) is not None:
            raw[key] = prompt_set.load()
    return options_from_dict(TrainConfig, raw)


def required_models(cfg: TrainConfig) -> list[HubModel]:
    """The pretrained models the run loads from the hub cache: SD at sd15, and the reward's."""
    from nabla.models.sd import pipeline_model

    models = [pipeline_model(cfg.model)] if cfg.scale == "sd15" else []
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


def build_backend(cfg: TrainConfig) -> DiffusionBackend:
    if cfg.scale == "toy2d":
        from nabla.models.toy2d import Toy2dBackend

        backend = Toy2dBackend.from_pretrained(cfg.model, device=cfg.device)
    elif cfg.scale in ("tiny", "sd15"):
        from nabla.models.sd import SDBackend

        backend = SDBackend.from_pretrained(cfg.model).to(cfg.device)
        if cfg.frozen_dtype != "float32":
            backend.set_frozen_dtype(getattr(torch, cfg.frozen_dtype))
        if cfg.gradient_checkpointing:
            backend.enable_gradient_checkpointing()
    else:
        raise ValueError(f"unknown scale '{cfg.scale}'; known: toy2d, tiny, sd15")
    backend.add_lora(cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
    return backend


def round_seeds(seed: int, round_index: int, batch: int) -> list[int]:
    """Distinct sampling seeds per (run seed, round); evaluation uses 0..K−1, never these."""
    base = 1_000_000 * (seed + 1) + round_index * batch
    return list(range(base, base + batch))


def round_generator(seed: int, round_index: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + round_index + 7_919_000_003 * rank)


# -- checkpoint files ---------------------------------------------------------------------------
def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class _NoLog:
    """What ranks other than 0 log to."""

    def write(self, row: dict) -> None:
        pass


class _CsvLog:
    """Append-only CSV whose header is fixed by its first row; rows past `step` dropped on resume."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.fields: list[str] | None = None
        if path.exists() and resume_step is not None:
            with path.open() as f:
                rows = list(csv.DictReader(f))
            self.fields = list(rows[0].keys()) if rows else None
            kept = [r for r in rows if int(r["step"]) <= resume_step]
            self._rewrite(kept)
        elif path.exists():
            path.unlink()

    def _rewrite(self, rows):
        with self.path.open("w", newline="") as f:
            if self.fields:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(rows)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


# -- the loop -----------------------------------------------------------------------------------
class ConfigChangedError(RuntimeError):
    """A run folder holds a checkpoint or result of another config: resuming would mix the two."""


#: config keys a resumed run may change (they alter no number the run produces)
RESUMABLE_CHANGES = ("log_every", "device")


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


class Trainer:
    """Runs one config in one folder; a folder of another config is refused, or restarted on request.

    ``on_config_change="restart"`` (what the workflow passes: it reruns a job because its config
    changed) deletes the folder's stale checkpoint and results before starting over.
    """

    def __init__(self, cfg: TrainConfig, out: str | Path, progress: bool = True, on_config_change: str = "fail",
                 config_path: str | None = None):
        if on_config_change not in ("fail", "restart"):
            raise ValueError(f"on_config_change must be 'fail' or 'restart', got {on_config_change!r}")
        # Every missing model named at once, before anything loads (config_path: for the message).
        check_available(required_models(cfg), config_path)
        distributed.init_from_env(cfg.device)
        cfg = dataclasses.replace(cfg, device=distributed.local_device(cfg.device))
        self.rank, self.world, self.main = distributed.rank(), distributed.world_size(), distributed.is_main()
        self.cfg, self.out, self.progress = cfg, Path(out), progress and self.main
        self.on_config_change = on_config_change
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.backend = build_backend(cfg)
        self.reward = build_reward(cfg.reward, **cfg.reward_options).to(cfg.device)
        if cfg.eval_target_beta is not None and not (cfg.scale == "toy2d" and hasattr(self.reward, "exact_target")):
            raise ValueError(
                f"eval_target_beta needs the toy2d scale and a reward with an exact tilted target; "
                f"got scale '{cfg.scale}', reward '{cfg.reward}'"
            )
        cls = method_class(cfg.method)
        self.method: Method = cls(
            options_from_dict(cls.Options, cfg.method_options), self.backend, self.reward, cfg.sampler
        )
        for module in self.method.modules().values():
            module.to(cfg.device)
        self.groups = {"lora": self.backend.lora_parameters()}
        extra = [p for m in self.method.modules().values() for p in m.parameters() if p.requires_grad]
        if extra:
            self.groups["flow"] = extra
        self.optimizer = torch.optim.AdamW(
            [
                {"params": self.groups["lora"], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                *([{"params": extra, "lr": cfg.flow_lr, "weight_decay": cfg.flow_weight_decay}] if extra else []),
            ]
        )
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.step, self.round, self.elapsed = 0, 0, 0.0
        self.pending: Rollouts | None = None

    # -- config and checkpoints ---------------------------------------------------------------
    def resolved_config(self) -> dict:
        cfg = dataclasses.asdict(self.cfg)
        cfg["method_options"] = dataclasses.asdict(self.method.options)
        return cfg

    def save_checkpoint(self) -> Path:
        """Write the latest checkpoint atomically: a killed write never replaces a good one."""
        final, tmp = self.out / "checkpoint", self.out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.backend.save_lora(tmp)
        modules = {
            f"{name}.{k}": v.detach().contiguous() for name, m in self.method.modules().items()
            for k, v in m.state_dict().items()
        }
        save_file(modules, str(tmp / "modules.safetensors"))
        tensors, opt_meta = _optimizer_to_files(self.optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": self.step,
            "round": self.round,
            "elapsed_seconds": self.elapsed,
            "optimizer": opt_meta,
            "world_size": self.world,
            "pending_prompts": self._save_rank_files(tmp),
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def _rank_suffix(self) -> str:
        return f".rank{self.rank}" if self.rank else ""

    def _save_rank_files(self, folder: Path) -> list[str] | None:
        """What differs between ranks: random state, the method's buffers, the pending batch."""
        suffix = self._rank_suffix()
        save_file({"cpu": torch.get_rng_state()}, str(folder / f"rng{suffix}.safetensors"))
        save_file(self.method.state_dict(), str(folder / f"method_state{suffix}.safetensors"))
        if self.pending is not None:
            save_file(self.pending.state_dict(), str(folder / f"pending{suffix}.safetensors"))
        return self.pending.prompts if self.pending is not None else None

    def _load_rank_files(self, folder: Path, pending_prompts: list[str] | None) -> None:
        suffix = self._rank_suffix()
        torch.set_rng_state(load_file(str(folder / f"rng{suffix}.safetensors"))["cpu"])
        self.method.load_state_dict(load_file(str(folder / f"method_state{suffix}.safetensors")))
        if pending_prompts is not None:
            self.pending = Rollouts.from_state_dict(
                load_file(str(folder / f"pending{suffix}.safetensors"), device=self.cfg.device), pending_prompts
            )

    def checkpoint(self) -> None:
        """Rank 0 writes the shared checkpoint; then every other rank adds its own files to it."""
        if self.main:
            self.save_checkpoint()
        distributed.barrier()
        if not self.main:
            folder = self.out / "checkpoint"
            prompts = self._save_rank_files(folder)
            (folder / f"pending{self._rank_suffix()}.json").write_text(json.dumps(prompts))
        distributed.barrier()

    def load_checkpoint(self) -> bool:
        folder = self.out / "checkpoint"
        if not (folder / "state.json").exists():
            return False
        state = json.loads((folder / "state.json").read_text())
        self.backend.load_lora(folder)
        modules = load_file(str(folder / "modules.safetensors"))
        for name, module in self.method.modules().items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in modules.items() if k.startswith(prefix)})
        self.optimizer.load_state_dict(
            _optimizer_from_files(load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
        )
        if state.get("world_size", 1) != self.world:
            raise RuntimeError(
                f"{folder} was written by {state.get('world_size', 1)} process(es), this run has {self.world}: "
                "resume with the same number of processes (each holds its own share of the round)"
            )
        prompts = state["pending_prompts"] if self.main else json.loads(
            (folder / f"pending{self._rank_suffix()}.json").read_text())
        self._load_rank_files(folder, prompts)
        self.step, self.round, self.elapsed = state["step"], state["round"], state["elapsed_seconds"]
        return True

    # -- pieces of the loop ---------------------------------------------------------------------
    def _set_lr(self) -> float:
        factor = 1.0
        if self.cfg.lr_schedule == "cosine":
            factor = 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / self.cfg.updates)))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.optimizer.param_groups[0]["lr"]

    def _round_share(self) -> tuple[list[str], list[int]]:
        """This rank's prompts and seeds: its slice of the round a single process of
        `trajectories_per_round` × ranks trajectories would sample."""
        n, prompts = self.cfg.trajectories_per_round, self.cfg.prompts
        total, start = n * self.world, n * self.rank
        round_prompts = [prompts[(self.round * total + i) % len(prompts)] for i in range(total)]
        return round_prompts[start : start + n], round_seeds(self.cfg.seed, self.round, total)[start : start + n]

    def _collect(self) -> Rollouts:
        batch = self.method.collect(*self._round_share())
        bad = (~torch.isfinite(batch.rewards)).sum().item()
        if distributed.any_rank(bad > 0, self.cfg.device):
            raise NonFiniteError(
                f"{bad} of {len(batch.rewards)} rewards{f' of rank {self.rank}' if self.world > 1 else ''} are non-finite in round {self.round} "
                f"(before update {self.step + 1}); stopping without a checkpoint of this state"
            )
        return batch

    def _update(self, microbatches: list) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        bad = None
        for micro in microbatches:
            out = self.method.loss(micro)
            if not torch.isfinite(out.loss):
                bad = f"non-finite loss ({out.loss.item()}) at update {self.step + 1}; terms: {out.logs}"
                break
            (out.loss / len(microbatches)).backward()
            logs["loss"] = logs.get("loss", 0.0) + out.loss.item() / len(microbatches)
            for key, value in out.logs.items():
                logs[key] = logs.get(key, 0.0) + value / len(microbatches)
        # Decided together, so that no rank waits forever for the others' gradients.
        if distributed.any_rank(bad is not None, self.cfg.device):
            raise NonFiniteError(f"{bad or 'non-finite loss on another rank'}; stopping without a checkpoint of this state")
        distributed.average_gradients([p for params in self.groups.values() for p in params])
        logs = distributed.mean_over_ranks(logs, self.cfg.device)
        for name, params in self.groups.items():
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            if not torch.isfinite(norm):
                raise NonFiniteError(f"non-finite {name} gradient norm at update {self.step + 1}")
            logs[f"grad_norm_{name}"] = norm.item()
        self.optimizer.step()
        return logs

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Reward of the fine-tuned model on the held-out prompts at fixed seeds (same noise each time)."""
        k = self.cfg.eval_samples_per_prompt
        prompts = [p for p in self.cfg.eval_prompts for _ in range(k)]
        seeds = [s for _ in self.cfg.eval_prompts for s in range(k)]
        batch = self.method.collect(prompts, seeds)
        row = {"eval_reward_mean": batch.rewards.mean().item(), "eval_reward_std": batch.rewards.std(correction=0).item()}
        if self.cfg.eval_target_beta is not None:
            prior = self.backend.mixture
            target = self.reward.exact_target(prior, self.cfg.eval_target_beta)
            row.update(distances_to_target(batch.trajectory.x0, prior, target))
        return row

    def _log_eval(self, log: _CsvLog) -> dict[str, float]:
        if not self.main:  # the weights are the same on every rank: rank 0 evaluates them
            return {}
        row = {"step": self.step, "seconds": round(self.elapsed, 3), **self.evaluate()}
        log.write(row)
        return row

    def _round(self, train_log: _CsvLog, eval_log: _CsvLog, bar) -> None:
        """One sampling round and its updates, then evaluation and checkpoint when due."""
        cfg = self.cfg
        start, step_before = time.perf_counter(), self.step
        fresh = self._collect()
        batch = self.pending if self.method.trains_on_previous_round and self.pending is not None else fresh
        self.pending = fresh if self.method.trains_on_previous_round else None
        plan = self.method.plan(batch, round_generator(cfg.seed, self.round, self.rank))
        round_rewards = distributed.gather_rewards(fresh.rewards)
        for microbatches in plan:
            if self.step >= cfg.updates:
                break
            lr = self._set_lr()
            logs = self._update(microbatches)
            self.step += 1
            bar.update(1)
            row = {
                "step": self.step, "round": self.round,
                "seconds": round(self.elapsed + time.perf_counter() - start, 3), "lr": lr,
                "train_reward_mean": round_rewards.mean().item(), "train_reward_std": round_rewards.std(correction=0).item(),
                **logs,
            }
            train_log.write(row)
            if self.main and (self.step % cfg.log_every == 0 or self.step == cfg.updates):
                bar.write(
                    f"update {self.step}/{cfg.updates}  reward {row['train_reward_mean']:.4g}"
                    f" ± {row['train_reward_std']:.3g}  loss {logs['loss']:.4g}"
                )
        self.round += 1
        self.elapsed += time.perf_counter() - start
        if cfg.eval_every and self.step // cfg.eval_every > step_before // cfg.eval_every and self.step < cfg.updates:
            self._log_eval(eval_log)
        if self.step // cfg.checkpoint_every > step_before // cfg.checkpoint_every or self.step >= cfg.updates:
            self.checkpoint()

    # -- run ----------------------------------------------------------------------------------
    def _check_folder_config(self, text: str) -> None:
        """Refuse (or clear, on restart) a folder whose saved config differs from this run's."""
        saved_path = self.out / "config.yaml"
        if not saved_path.exists():
            return
        changed = config_changes(yaml.safe_load(saved_path.read_text()) or {}, yaml.safe_load(text))
        if not changed:
            return
        if self.on_config_change == "fail":
            raise ConfigChangedError(
                f"{self.out} holds a run of another config (changed: {', '.join(changed)}); resuming would "
                "mix the two. Use another --out, delete the folder, or pass --on-config-change restart"
            )
        for name in ("checkpoint", "final"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in ("done.json", "train_log.csv", "eval_log.csv"):
            (self.out / name).unlink(missing_ok=True)
        print(f"config changed ({', '.join(changed)}): restarting {self.out} from scratch")

    def run(self) -> dict:
        config_text = yaml.safe_dump(self.resolved_config(), sort_keys=False)
        refused = None
        if self.main:
            try:
                self._check_folder_config(config_text)
            except ConfigChangedError as error:
                refused = error
        if distributed.any_rank(refused is not None, self.cfg.device):
            raise refused or ConfigChangedError(f"{self.out} holds a run of another config (see rank 0)")
        if (self.out / "done.json").exists():
            return json.loads((self.out / "done.json").read_text())
        resumed = self.load_checkpoint()
        if self.main:
            (self.out / "config.yaml").write_text(config_text)
        log = (lambda name: _CsvLog(self.out / name, self.step if resumed else None)) if self.main else (lambda name: _NoLog())
        train_log, eval_log = log("train_log.csv"), log("eval_log.csv")
        if not resumed:
            self._log_eval(eval_log)
        cfg = self.cfg
        bar = tqdm(total=cfg.updates, initial=self.step, desc=f"{cfg.method}/{cfg.reward}/s{cfg.seed}", disable=not self.progress)
        diverged = None
        while self.step < cfg.updates and diverged is None:
            try:
                self._round(train_log, eval_log, bar)
            except NonFiniteError as error:
                if cfg.on_nonfinite == "fail":
                    raise
                diverged = {"diverged_at": self.step + 1, "diverged": str(error)}
                bar.write(f"stopping: {error}")
        bar.close()
        final_eval = self._log_eval(eval_log)
        summary = {"step": self.step, "rounds": self.round, "train_seconds": round(self.elapsed, 2), **final_eval}
        summary.update(diverged or {})
        if self.main:
            final = self.out / "final"
            self.backend.save_lora(final)
            for name, module in self.method.modules().items():
                save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(final / f"{name}.safetensors"))
            (self.out / "done.json").write_text(json.dumps(summary, indent=1))
        distributed.barrier()
        return summary
