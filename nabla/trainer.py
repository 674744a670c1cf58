"""The one training loop every method runs through.

Per round: sample ``trajectories_per_round`` fresh trajectories with the current policy
(``Method.collect``), split a batch (this round's, or the previous round's for methods that train
one round behind) into the method's optimiser updates of accumulated micro-batches
(``Method.plan``), and take one AdamW step per update with gradient clipping per parameter group.
The budget is a number of rounds, so every method sees the same trajectories; each takes its own
release's number of updates per round. Everything random is a function of (seed, round), so a run
killed after a checkpoint and resumed reproduces the uninterrupted run exactly on CPU.

A run folder holds ``config.yaml`` (the resolved config), ``train_log.csv`` (one row per update),
``eval_log.csv`` (the dense evaluation: one row per split every ``eval_every`` rounds),
``checkpoint/`` (the latest: LoRA, extra modules, optimiser, pending batch — safetensors — and
``state.json``), and, once finished, ``final/`` and ``done.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from nabla import distributed
from nabla.checkpoint import CsvLog, NoLog, optimizer_from_files, optimizer_to_files, replace_folder
from nabla.config import TrainConfig, config_changes, resolved
from nabla.methods import Method, Rollouts, method_class
from nabla.models.base import DiffusionBackend
from nabla.options import options_from_dict
from nabla.preflight import check_models
from nabla.rewards import build_reward
from nabla.tracking import start_tracking


class NonFiniteError(RuntimeError):
    """A reward, loss or gradient became NaN/inf: the run stops before any checkpoint of it."""


class ConfigChangedError(RuntimeError):
    """A run folder holds a checkpoint or result of another config: resuming would mix the two."""


def build_backend(cfg: TrainConfig, with_lora: bool = True) -> DiffusionBackend:
    if cfg.scale == "toy2d":
        from nabla.models.toy2d import Toy2dBackend

        backend = Toy2dBackend.from_pretrained(cfg.model, device=cfg.device)
    else:
        from nabla.models.sd import SDBackend

        backend = SDBackend.from_pretrained(cfg.model).to(cfg.device)
        if cfg.frozen_dtype != "float32":
            backend.set_frozen_dtype(getattr(torch, cfg.frozen_dtype))
        if cfg.gradient_checkpointing:
            backend.enable_gradient_checkpointing()
    if with_lora:
        backend.add_lora(cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
    return backend


def round_seeds(seed: int, round_index: int, batch: int) -> list[int]:
    """Distinct sampling seeds per (run seed, round); the evaluation splits' never coincide."""
    base = 1_000_000 * (seed + 1) + round_index * batch
    return list(range(base, base + batch))


def round_generator(seed: int, round_index: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + round_index + 7_919_000_003 * rank)


class Trainer:
    """Runs one config in one folder; a folder of another config is refused, or restarted on request.

    ``on_config_change="restart"`` (what the workflow passes: it reruns a job because its config
    changed) deletes the folder's stale checkpoint and results before starting over.
    """

    def __init__(self, cfg: TrainConfig, out: str | Path, progress: bool = True, on_config_change: str = "fail",
                 config_path: str | None = None):
        if on_config_change not in ("fail", "restart"):
            raise ValueError(f"on_config_change must be 'fail' or 'restart', got {on_config_change!r}")
        # Every missing model named at once, before anything loads or the folder is made (config_path: for the message).
        check_models(cfg, config_path)
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
        options = options_from_dict(cls.Options, cfg.method_options)
        self.method: Method = cls(options, self.backend, self.reward, cfg.sampler, total_rounds=cfg.rounds)
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
        self._evaluator = None  # built on rank 0 at the first evaluation (feature networks load then)
        self.step, self.round, self.elapsed = 0, 0, 0.0
        self.last_eval: dict[str, dict] = {}  # split → the latest evaluation row
        self.pending: Rollouts | None = None

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write the latest checkpoint atomically: a killed write never replaces a good one."""

        def write(folder: Path) -> None:
            self.backend.save_lora(folder)
            modules = {
                f"{name}.{k}": v.detach().contiguous() for name, m in self.method.modules().items()
                for k, v in m.state_dict().items()
            }
            save_file(modules, str(folder / "modules.safetensors"))
            tensors, opt_meta = optimizer_to_files(self.optimizer)
            save_file(tensors, str(folder / "optimizer.safetensors"))
            state = {
                "step": self.step,
                "round": self.round,
                "elapsed_seconds": self.elapsed,
                "last_eval": self.last_eval,
                "optimizer": opt_meta,
                "world_size": self.world,
                "pending_prompts": self._save_rank_files(folder),
            }
            (folder / "state.json").write_text(json.dumps(state, indent=1))

        return replace_folder(self.out / "checkpoint", write)

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
            optimizer_from_files(load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
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
        self.last_eval = state["last_eval"]
        return True

    # -- pieces of the loop ---------------------------------------------------------------------
    def _set_lr(self, progress: float) -> float:
        """The learning rates at ``progress`` ∈ [0, 1) of the budget (cosine: decay to 0 at 1)."""
        factor = 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) if self.cfg.lr_schedule == "cosine" else 1.0
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
                f"{bad} of {len(batch.rewards)} rewards{f' of rank {self.rank}' if self.world > 1 else ''} are non-finite in round {self.round + 1} "
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

    @property
    def trajectories(self) -> int:
        """Trajectories sampled for training so far, over every process."""
        return self.round * self.cfg.trajectories_per_round * self.world

    def evaluator(self):
        if self._evaluator is None:
            from nabla.evaluation import dense_evaluator

            self._evaluator = dense_evaluator(self.cfg, self.backend, self.reward, self.method.options)
        return self._evaluator

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """The dense metrics of the current model on one prompt split (nabla.evaluation)."""
        return self.evaluator()(split)

    def _log_eval(self, log) -> None:
        if not self.main:  # the weights are the same on every rank: rank 0 evaluates them
            return
        for split in self.cfg.eval_splits:
            row = {"step": self.step, "round": self.round, "trajectories": self.trajectories,
                   "seconds": round(self.elapsed, 3), "split": split, **self.evaluate(split)}
            log.write(row)
            self.last_eval[split] = row

    def _round(self, train_log, eval_log, bar) -> None:
        """One sampling round and its updates, then evaluation and checkpoint when due."""
        cfg = self.cfg
        start = time.perf_counter()
        fresh = self._collect()
        batch = self.pending if self.method.trains_on_previous_round and self.pending is not None else fresh
        self.pending = fresh if self.method.trains_on_previous_round else None
        plan = self.method.plan(batch, round_generator(cfg.seed, self.round, self.rank))
        round_rewards = distributed.gather_rewards(fresh.rewards)
        logs = {"loss": float("nan")}
        # the sample std of the round's rewards (0 for a round of one trajectory, not NaN)
        reward_mean = round_rewards.mean().item()
        reward_std = round_rewards.std(correction=int(len(round_rewards) > 1)).item()
        for index, microbatches in enumerate(plan):
            lr = self._set_lr((self.round + index / len(plan)) / cfg.rounds)
            logs = self._update(microbatches)
            self.step += 1
            train_log.write({
                "step": self.step, "round": self.round + 1,
                "seconds": round(self.elapsed + time.perf_counter() - start, 3), "lr": lr,
                "train_reward_mean": reward_mean, "train_reward_std": reward_std,
                **logs,
            })
        self.round += 1
        self.elapsed += time.perf_counter() - start
        bar.update(1)
        if self.main and (self.round % cfg.log_every == 0 or self.round == cfg.rounds):
            bar.write(f"round {self.round}/{cfg.rounds} (update {self.step})  reward {reward_mean:.4g}"
                      f" ± {reward_std:.3g}  loss {logs['loss']:.4g}")
        # evaluate, then checkpoint: a resumed run has every evaluation up to its checkpoint
        if self.round == cfg.rounds or (cfg.eval_every and self.round % cfg.eval_every == 0):
            self._log_eval(eval_log)
        if self.round == cfg.rounds or self.round % cfg.checkpoint_every == 0:
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
        for name in ("done.json", "metrics.json", "train_log.csv", "eval_log.csv"):
            (self.out / name).unlink(missing_ok=True)
        print(f"config changed ({', '.join(changed)}): restarting {self.out} from scratch")

    def run(self) -> dict:
        config_text = yaml.safe_dump(resolved(self.cfg, self.method.options), sort_keys=False)
        refused = None
        if self.main:
            try:
                self._check_folder_config(config_text)
            except ConfigChangedError as error:
                refused = error
        if distributed.any_rank(refused is not None, self.cfg.device):
            raise refused or ConfigChangedError(f"{self.out} holds a run of another config (see rank 0)")
        if (self.out / "done.json").exists():
            if self.main:
                print(f"{self.out}: finished before, not trained again")
            return json.loads((self.out / "done.json").read_text())
        resumed = self.load_checkpoint()
        if self.main:
            (self.out / "config.yaml").write_text(config_text)
            if resumed:
                print(f"{self.out}: resuming from its checkpoint at round {self.round} (update {self.step})")
        resume_round = self.round if resumed else None
        log = (lambda name: CsvLog(self.out / name, resume_round)) if self.main else (lambda name: NoLog())
        train_log, eval_log = log("train_log.csv"), log("eval_log.csv")
        tracker = None  # optional mirror of the two logs (nabla.tracking), rank 0's only
        if self.main:
            train_log, eval_log, tracker = start_tracking(self.cfg.tracker, self.out, train_log, eval_log)
        if not resumed:
            self._log_eval(eval_log)  # round 0: the prior itself (a fresh LoRA changes nothing)
        cfg = self.cfg
        bar = tqdm(total=cfg.rounds, initial=self.round, desc=f"{cfg.method}/{cfg.reward}/s{cfg.seed}",
                   disable=not self.progress)
        diverged = None
        while self.round < cfg.rounds and diverged is None:
            try:
                self._round(train_log, eval_log, bar)
            except NonFiniteError as error:
                if cfg.on_nonfinite == "fail":
                    raise
                diverged = {"diverged_at": self.step + 1, "diverged_in_round": self.round + 1, "diverged": str(error)}
                bar.write(f"stopping: {error}")
                if any(row["step"] != self.step for row in self.last_eval.values()):
                    self._log_eval(eval_log)  # the last finite weights, unless just evaluated
        bar.close()
        if tracker is not None:
            tracker.close()
        summary = {"rounds": self.round, "updates": self.step, "trajectories": self.trajectories,
                   "train_seconds": round(self.elapsed, 2), **(diverged or {}), "target": self.method.target,
                   "target_beta": self.method.target_beta(self.method.options, self.backend.sample_shape),
                   "last_eval": self.last_eval}
        if self.main:
            final = self.out / "final"
            self.backend.save_lora(final)
            for name, module in self.method.modules().items():
                save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(final / f"{name}.safetensors"))
            (self.out / "done.json").write_text(json.dumps(summary, indent=1))
        distributed.barrier()
        return summary
