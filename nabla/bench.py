"""Where the time goes: every method's cost per update, in one process, as figures (not tests).

For a scale (toy2d or tiny) and its training config, ``run_bench`` trains every method for a few
rounds through the real :class:`~nabla.trainer.Trainer` and reports, per method:

* wall seconds per update (median over rounds, the first round left out as warm-up) and the peak
  memory above the process's level before the method (CUDA: allocated; CPU: resident set);
* the same time in *denoiser-equivalents*: divided by one forward + backward of the guided
  denoiser (both CFG branches, gradients into the LoRA) at the round's batch, timed in this run;
* the denoiser passes: latent rows through the denoiser forward (a CFG pair counts 2) and
  vector-Jacobian products back through it, split by adapter on (θ) or off (the prior), per
  trajectory of a round's collection and, for the transition-based methods, per trained transition;
* the FLOPs one update's math needs (matmuls and convolutions, forward and backward, counted by
  ``torch.utils.flop_counter`` over a real round: its collection and its updates, per update),
  the FLOP rate the update achieves, and its seconds over the *floor*, those FLOPs at the rate of
  a large float32 matmul on this machine (timed in the same run): the distance to the physical limit;
* where a round's seconds go: collection (sampling, decode, reward, what a method adds) against
  the updates (losses, backward passes, optimiser);
* the reward on the held-out prompts against training seconds (a figure).

At the image scales it also times the sampler against diffusers' own
``StableDiffusionPipeline.__call__`` with the same model, steps, batch, η and guidance.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from nabla.methods import Transitions, available_methods
from nabla.sampling import rollout
from nabla.config import load_train_config
from nabla.trainer import Trainer, round_generator

#: per scale: training config, reward, rounds per method, evaluation interval and samples per prompt
BENCH_SCALES = {
    "toy2d": {"config": "config/train/toy2d.yaml", "reward": "quadratic", "rounds": 40, "eval_every": 5, "eval_samples": 256},
    "tiny": {"config": "config/train/tiny.yaml", "reward": "colorfulness", "rounds": 6, "eval_every": 2, "eval_samples": 2},
}

# -- measurements -----------------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak memory used inside the block above the level at its start, in MiB (``result["mib"]``).

    CUDA: the allocator's peak. CPU: the resident set sampled every 2 ms, after handing freed heap
    back to the OS (malloc_trim) so that what an earlier method freed does not hide this one's use.
    """
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the measure is then an upper bound of nothing freed
        pass
    base, peak, done = _resident_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["mib"] = max(0, max(peak[0], _resident_bytes()) - base) / 2**20


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> float:
    """The float32 rate of an n×n by n×n matmul (2n³ FLOPs), median over ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats)


class MathFlops(TorchDispatchMode):
    """Counts the FLOPs of every op ``torch.utils.flop_counter`` has a formula for (matmuls,
    convolutions, attention; forward and backward). FlopCounterMode itself cannot be used here:
    its module tracker refuses the ``autograd.grad`` calls inside the ∇-GFlowNets' losses."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def round_flops(trainer: Trainer) -> dict[str, float]:
    """FLOPs of one round (collection, then every update of its plan), in total and per update.
    Run after the timed rounds: it trains the model one round further."""
    with MathFlops() as collect:
        batch = trainer._collect()
    plan = trainer.method.plan(batch, round_generator(trainer.cfg.seed, trainer.round))
    with MathFlops() as update:
        for microbatches in plan:
            trainer._update(microbatches)
    return {"collect_flops_per_round": collect.flops, "update_flops_per_round": update.flops,
            "flops_per_update": (collect.flops + update.flops) / len(plan)}


@contextmanager
def phase_seconds(trainer: Trainer) -> Iterator[Counter]:
    """Wall seconds the trainer spends collecting and updating inside the block."""
    seconds: Counter = Counter()
    originals = {"collect": trainer._collect, "update": trainer._update}

    def timed(name, fn):
        def call(*args):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                seconds[name] += time.perf_counter() - start
        return call

    for name, fn in originals.items():
        setattr(trainer, f"_{name}", timed(name, fn))  # instance attributes shadow the methods
    try:
        yield seconds
    finally:
        for name in originals:
            delattr(trainer, f"_{name}")


@contextmanager
def count_denoiser_passes(backend) -> Iterator[Counter]:
    """Count latent rows through ``backend.model_output`` and the VJPs back through its outputs."""
    counts: Counter = Counter()
    original = backend.model_output

    def counted(x_t, t, cond):
        out = original(x_t, t, cond)
        who = "theta" if backend.adapter_enabled else "prior"
        rows = x_t.shape[0]
        counts[f"forward_rows_{who}"] += rows
        if out.requires_grad:
            def on_backward(grad, who=who, rows=rows):
                counts[f"backward_rows_{who}"] += rows
            out.register_hook(on_backward)
        return out

    backend.model_output = counted  # the instance attribute shadows the method
    try:
        yield counts
    finally:
        del backend.model_output


def denoiser_unit_seconds(backend, batch: int, guidance_scale: float, repeats: int = 5) -> float:
    """One guided denoiser forward + backward (into the LoRA) on `batch` latents at a mid timestep."""
    x = torch.randn(batch, *backend.sample_shape, device=backend.device)
    t = torch.full((batch,), int(backend.scheduler.config.num_train_timesteps) // 2, device=backend.device)
    cond = backend.encode_prompts(["cat"] * batch)
    uncond = backend.null_condition(batch) if guidance_scale != 1.0 else None
    params = backend.lora_parameters()

    def step():
        out = backend.guided_output(x, t, cond, uncond, guidance_scale)
        grads = torch.autograd.grad(out.square().mean(), params)
        return grads

    return median_seconds(step, repeats)


PASS_KEYS = [f"{d}_rows_{w}" for d in ("forward", "backward") for w in ("theta", "prior")]


def denoiser_passes(trainer: Trainer) -> dict[str, float]:
    """Denoiser rows and VJP rows of a round's collection per trajectory (the rollout, and what a
    method adds: the prior's forwards of RTB and DPOK's KL return, Adjoint Matching's prior VJPs),
    and for the transition-based methods those of one loss + backward per trained transition."""
    method = trainer.method
    with count_denoiser_passes(trainer.backend) as collected:
        batch = trainer._collect()
    passes = {f"collect_{k}_per_trajectory": collected[k] / len(batch.prompts) for k in PASS_KEYS}
    plan = method.plan(batch, round_generator(trainer.cfg.seed, 0))
    micro = plan[0][0]
    transitions = getattr(micro, "transitions", micro)  # most methods wrap theirs
    if not isinstance(transitions, Transitions):
        return passes
    with count_denoiser_passes(trainer.backend) as counts:
        method.loss(micro).loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    n = transitions.x_t.shape[0]
    return passes | {f"{k}_per_transition": counts[k] / n for k in PASS_KEYS} | {
        "last_fraction": transitions.is_last.float().mean().item()}


# -- the sampler against diffusers' pipeline ----------------------------------------------------


def sampler_against_pipeline(model: str | Path, batch: int, num_steps: int, guidance_scale: float, eta: float, repeats: int = 5) -> dict:
    """Median seconds of our sampler (decode included) and of ``StableDiffusionPipeline.__call__``.

    Both get the same pipeline object (no LoRA), prompts, steps, η and guidance; calls alternate
    so that machine noise hits both alike.
    """
    from nabla.models.sd import SDBackend

    backend = SDBackend.from_pretrained(model)
    pipe = backend.pipeline
    pipe.scheduler = backend.scheduler
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["cat"] * batch, list(range(batch))

    def ours():
        with torch.no_grad():
            return backend.decode(rollout(backend, prompts, seeds, num_steps, eta, guidance_scale))

    def ours_recorded():
        return rollout(backend, prompts, seeds, num_steps, eta, guidance_scale, record=True)

    def theirs():
        generator = torch.Generator(backend.device).manual_seed(0)
        return pipe(prompts, num_inference_steps=num_steps, guidance_scale=guidance_scale, eta=eta,
                    generator=generator, output_type="pt").images

    times: dict[str, list[float]] = {"ours": [], "ours_recorded": [], "diffusers": []}
    for fn in (ours, ours_recorded, theirs):
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("ours_recorded", ours_recorded), ("diffusers", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {f"{k}_seconds": statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch, "steps": num_steps, "guidance_scale": guidance_scale, "eta": eta, **medians,
        "ours_over_diffusers": medians["ours_seconds"] / medians["diffusers_seconds"],
        "recorded_over_diffusers": medians["ours_recorded_seconds"] / medians["diffusers_seconds"],
    }


# -- the benchmark ------------------------------------------------------------------------------


def bench_trainer(config: str | Path, method: str, reward: str, out: Path, device: str = "cpu", seed: int = 0,
                  **overrides) -> Trainer:
    cfg = load_train_config(config, method, reward, seed, checkpoint_every=10**6, device=device, **overrides)
    return Trainer(cfg, out, progress=False)


def bench_method(config: str | Path, method: str, reward: str, rounds: int, eval_every: int, eval_samples: int,
                 out: Path, device: str = "cpu", seed: int = 0, model: str | None = None) -> tuple[dict, pd.DataFrame]:
    """Train one method for `rounds` rounds in `out` (on the config's prior, or `model`); its cost
    row and its eval curve."""
    trainer = bench_trainer(config, method, reward, out, device, seed, rounds=rounds, eval_every=eval_every,
                            eval_samples_per_prompt=eval_samples, eval_splits=("evaluation",), model=model)
    cfg = trainer.cfg
    passes = denoiser_passes(trainer)
    with peak_memory(trainer.backend.device) as memory, phase_seconds(trainer) as phases:
        summary = trainer.run()
    flops = round_flops(trainer) if "diverged_at" not in summary else {}
    train_log = pd.read_csv(out / "train_log.csv")
    # Seconds per update from the rounds after the first (warm-up), each round's time over its updates.
    rounds = train_log.groupby("round").agg(seconds=("seconds", "max"), updates=("step", "count"))
    per_round = rounds["seconds"].diff().dropna() / rounds["updates"].iloc[1:]
    per_update = float(per_round.median()) if len(per_round) else float(rounds["seconds"].iloc[0] / rounds["updates"].iloc[0])
    row = {
        "scale": cfg.scale, "method": method, "reward": reward, "rounds": summary["rounds"], "updates": summary["updates"],
        "trajectories_per_round": cfg.trajectories_per_round, "seconds_per_update": per_update,
        "peak_memory_mib": memory["mib"], "diverged": "diverged_at" in summary, **passes, **flops,
        "collect_share": phases["collect"] / (phases["collect"] + phases["update"]),
    }
    curve = pd.read_csv(out / "eval_log.csv").assign(scale=cfg.scale, method=method, seed=seed, diverged=row["diverged"])
    return row, curve


def run_bench(scale: str, config: str | Path, reward: str, rounds: int, eval_every: int, eval_samples: int,
              methods: Sequence[str] | None = None, device: str = "cpu", sampler_repeats: int = 7,
              progress: Callable[[str], None] = print, model: str | None = None) -> dict[str, pd.DataFrame]:
    """Every method at one scale, in this process (on the config's prior, or `model`); returns the
    methods, curves and sampler frames."""
    rows, curves = [], []
    with tempfile.TemporaryDirectory(prefix="nabla-bench-") as tmp:
        # One unit for every method of the scale (same batch, same LoRA), measured before and
        # after them and averaged, so that a noisy moment does not skew one method's ratio.
        reference = bench_trainer(config, "draft", reward, Path(tmp) / "unit", device, model=model)
        batch, guidance = reference.cfg.trajectories_per_round, reference.cfg.sampler.guidance_scale
        units = [denoiser_unit_seconds(reference.backend, batch, guidance)]
        rates = [matmul_flops_per_second()]
        for method in methods or available_methods():
            row, curve = bench_method(config, method, reward, rounds, eval_every, eval_samples,
                                      Path(tmp) / method, device, model=model)
            progress(f"{scale} {method}: {row['seconds_per_update']:.3f} s/update, "
                     f"peak +{row['peak_memory_mib']:.0f} MiB")
            rows.append(row)
            curves.append(curve)
        units.append(denoiser_unit_seconds(reference.backend, batch, guidance))
        rates.append(matmul_flops_per_second())
    unit = statistics.fmean(units)
    methods_frame = pd.DataFrame(rows).assign(denoiser_unit_seconds=unit, matmul_flops_per_second=statistics.fmean(rates))
    methods_frame["denoiser_equivalents_per_update"] = methods_frame["seconds_per_update"] / unit
    if "flops_per_update" in methods_frame:
        methods_frame["achieved_flops_per_second"] = methods_frame["flops_per_update"] / methods_frame["seconds_per_update"]
        floor = methods_frame["flops_per_update"] / methods_frame["matmul_flops_per_second"]
        methods_frame["over_floor"] = methods_frame["seconds_per_update"] / floor
    frames = {"methods": methods_frame, "curves": pd.concat(curves, ignore_index=True)}
    if scale != "toy2d":
        cfg = load_train_config(config, "residual_nabla_db", reward, 0, model=model)
        s = cfg.sampler
        frames["sampler"] = pd.DataFrame([{"scale": scale, **sampler_against_pipeline(
            cfg.model, cfg.trajectories_per_round, s.num_steps, s.guidance_scale, s.eta, sampler_repeats)}])
        progress(f"{scale} sampler: {frames['sampler'].iloc[0]['ours_over_diffusers']:.3f}× diffusers' pipeline")
    return frames


def ratios_to(frame: pd.DataFrame, reference: str = "draft") -> pd.Series:
    """Each method's seconds per update over the reference method's (same scale, same run)."""
    ref = frame.loc[frame["method"] == reference, "seconds_per_update"]
    return frame["seconds_per_update"] / float(ref.iloc[0]) if len(ref) else pd.Series(float("nan"), index=frame.index)


# -- report -------------------------------------------------------------------------------------

PASS_COLUMNS = tuple(f"{k}_per_transition" for k in PASS_KEYS)
COLLECT_COLUMNS = tuple(f"collect_{k}_per_trajectory" for k in PASS_KEYS)


def markdown_table(methods: pd.DataFrame, sampler: pd.DataFrame | None) -> str:
    """The benchmark as Markdown: one table per scale, then the sampler comparison."""
    from nabla.report.figures import method_label

    lines = []
    for scale, frame in methods.groupby("scale", sort=False):
        frame = frame.reset_index(drop=True)
        ratio = ratios_to(frame)
        unit = frame["denoiser_unit_seconds"].median()
        lines += [
            f"### {scale}: {int(frame['rounds'].max())} rounds per method, "
            f"{int(frame['trajectories_per_round'].iloc[0])} trajectories per round",
            "",
            f"Denoiser-equivalent = one guided forward + backward at that batch: {1000 * unit:.1f} ms here.",
            "Passes = latent rows through the denoiser (a CFG pair counts 2), forward θ / forward prior / "
            "backward θ / backward prior: per trajectory of a round's collection (sampling and what the "
            "method adds to it), and per trained transition of its loss.",
            "",
            "| method | s / update | × DRaFT-1 | denoiser-equivalents | peak memory (MiB) | passes per collected trajectory "
            "| passes per transition |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, row in frame.iterrows():
            passes = [(" / ".join(f"{row[c]:.2g}" for c in columns) if has_values(row, columns) else "–")
                      for columns in (COLLECT_COLUMNS, PASS_COLUMNS)]
            lines.append(
                f"| {method_label(row['method'])}{' (diverged)' if row['diverged'] else ''} "
                f"| {row['seconds_per_update']:.3f} | {ratio[i]:.2f} | {row['denoiser_equivalents_per_update']:.1f} "
                f"| {row['peak_memory_mib']:.0f} | {passes[0]} | {passes[1]} |"
            )
        lines.append("")
        if "flops_per_update" in frame:
            lines += flop_lines(frame)
    if sampler is not None and len(sampler):
        lines += [
            "### The sampler against diffusers' `StableDiffusionPipeline.__call__` (median seconds)",
            "",
            "| scale | batch | steps | CFG | η | ours (+ decode) | ours, recording the trajectory | diffusers | ratio | ratio, recording |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, s in sampler.iterrows():
            lines.append(
                f"| {s['scale']} | {s['batch']} | {s['steps']} | {s['guidance_scale']:g} | {s['eta']:g} "
                f"| {s['ours_seconds']:.3f} | {s['ours_recorded_seconds']:.3f} | {s['diffusers_seconds']:.3f} "
                f"| {s['ours_over_diffusers']:.3f} | {s['recorded_over_diffusers']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def flop_lines(frame: pd.DataFrame) -> list[str]:
    """One scale's distance to the FLOP floor, and where a round's seconds go."""
    from nabla.report.figures import method_label

    rate = frame["matmul_flops_per_second"].iloc[0]
    lines = [
        f"FLOPs: matmuls and convolutions of one real round (collection + updates) per update "
        f"(torch.utils.flop_counter); floor = those FLOPs at this run's 2048³ float32 matmul rate, "
        f"{rate / 1e9:.1f} GFLOP/s. Collection = sampling, decode, reward and what the method adds.",
        "",
        "| method | GFLOP / update | of which collection | achieved GFLOP/s | s / update over the floor | collection's share of the seconds |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in frame.iterrows():
        if pd.isna(row.get("flops_per_update")):
            continue
        collect_share = row["collect_flops_per_round"] / (row["collect_flops_per_round"] + row["update_flops_per_round"])
        lines.append(
            f"| {method_label(row['method'])} | {row['flops_per_update'] / 1e9:.1f} | {collect_share:.0%} "
            f"| {row['achieved_flops_per_second'] / 1e9:.1f} | {row['over_floor']:.1f}× | {row['collect_share']:.0%} |"
        )
    return lines + [""]


def has_values(row: pd.Series, columns: Sequence[str]) -> bool:
    return all(c in row and pd.notna(row[c]) for c in columns)


def write_bench(frames: dict[str, pd.DataFrame], out: str | Path) -> list[Path]:
    """methods.csv, curves.csv, sampler.csv, bench.md and the reward-against-seconds figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("methods", "curves", "sampler"):
        if name in frames:
            frames[name].to_csv(out / f"{name}.csv", index=False)
            written.append(out / f"{name}.csv")
    (out / "bench.md").write_text(markdown_table(frames["methods"], frames.get("sampler")))
    written.append(out / "bench.md")
    return written + bench_figures(out)


def bench_scales(folder: str | Path) -> list[str]:
    """The scales a bench folder's curves.csv holds, in its order (one figure each)."""
    return list(dict.fromkeys(pd.read_csv(Path(folder) / "curves.csv")["scale"]))


def bench_figures(folder: str | Path, scales: Sequence[str] | None = None) -> list[Path]:
    """reward_<scale>.png/.pdf from a bench folder's curves.csv and methods.csv alone (so that
    `snakemake figures` redraws them without rerunning the bench): each scale's reward on the
    evaluation split against trajectories and training seconds, its title naming the reward, the
    seeds, the rounds and the trajectories per round (``scales``: only theirs)."""
    from nabla.report.figures import curve_figure, method_label, save

    folder = Path(folder)
    curves, methods = pd.read_csv(folder / "curves.csv"), pd.read_csv(folder / "methods.csv")
    written = []
    for scale in bench_scales(folder):
        if scales and scale not in scales:
            continue
        runs = curves[curves["scale"] == scale]
        rows = methods[methods["scale"] == scale]
        diverged = [method_label(m) for m in rows.loc[rows["diverged"].astype(bool), "method"]]
        notes = [f"The bench: every method trained once ({seeds_text(runs)}) with {scale}'s training config, timed "
                 "in one process: a cost measurement, not the comparison (results/<set>/ holds that)."]
        if diverged:
            notes.append(f"Diverged: {', '.join(diverged)}.")
        fig = curve_figure(runs, panels=(("reward_mean", "mean reward, evaluation split", False),),
                           title=bench_title(scale, runs, rows), notes=notes)
        written += save(fig, folder / f"reward_{scale}")
    return written


def seeds_text(curves: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in curves["seed"]})
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def bench_title(scale: str, curves: pd.DataFrame, methods: pd.DataFrame) -> str:
    """A bench figure's title: its scale, reward, seeds and budget (from its curves and methods rows)."""
    rewards = ", ".join(dict.fromkeys(methods["reward"].astype(str)))
    budget = " / ".join(dict.fromkeys(f"{int(r.rounds)} rounds × {int(r.trajectories_per_round)} trajectories"
                                      for r in methods.itertuples()))
    return f"bench, {scale}: reward {rewards}, {seeds_text(curves)}\n{budget} per method"
