"""`python -m nabla smoke`: a few rounds of a method at a scale's real shapes, timed, with peak memory.

At ``sd15`` it loads SD 1.5 from the local cache when it is there, else builds a random-weight
pipeline of SD 1.5's exact architecture (nothing is downloaded), and runs the shared trainer with
the paper's sampler (DDIM η=1, 50 steps, CFG 5) and a differentiable reward that needs no weights
(colourfulness). It answers "does this code path run on this machine, how long does an update take
and how much memory does it need", not "does it learn".
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import torch

from nabla.hub import local_path
from nabla.methods import SamplerConfig
from nabla.models.random_sd import save_random_sd_pipeline
from nabla.models.sd import pipeline_model
from nabla.config import TrainConfig
from nabla.trainer import Trainer

SD15_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# The paper's 10% of trained transitions, for the GFlowNet methods (DDPO keeps its own default).
SUBSAMPLING_METHODS = ("residual_nabla_db", "nabla_db", "db_gflownet")


def resolve_model(shape: str, model: str | None, folder: Path, device: str) -> tuple[str, str]:
    """(model folder or id, description): the local SD 1.5 if cached, else random weights of its shape."""
    if shape == "sd15" and model is None:
        # a look into the cache, not a load: the trainer loads the model once, itself
        if local_path(pipeline_model(SD15_MODEL_ID)) is not None:
            return SD15_MODEL_ID, f"{SD15_MODEL_ID} (local cache)"
    elif model is not None:
        return model, model
    path = folder / f"random-{shape}"
    if not (path / "model_index.json").exists():
        save_random_sd_pipeline(shape, path, seed=0, device=device)
    return str(path), f"random weights, {shape} architecture"


def smoke_config(model: str, method: str, device: str, rounds: int, trajectories: int, num_steps: int,
                 microbatch_size: int) -> TrainConfig:
    options = {"microbatch_size": microbatch_size}
    if method in SUBSAMPLING_METHODS:
        options["transition_fraction"] = 0.1
    return TrainConfig(
        scale="sd15",
        model=model,
        method=method,
        reward="colorfulness",
        rounds=rounds,
        trajectories_per_round=trajectories,
        sampler=SamplerConfig(num_steps=num_steps, eta=1.0, guidance_scale=5.0),
        prompts=("cat", "dog"),
        validation_prompts=("cow",),
        eval_prompts=("horse",),
        eval_samples_per_prompt=1,
        eval_every=0,
        eval_splits=(),
        checkpoint_every=rounds,
        device=device,
        method_options=options,
    )


def run_smoke(
    shape: str = "sd15",
    out: str | Path = "runs/smoke",
    method: str = "residual_nabla_db",
    model: str | None = None,
    device: str | None = None,
    rounds: int = 2,
    trajectories: int = 8,
    num_steps: int = 50,
    microbatch_size: int = 8,
) -> dict:
    """Run `rounds` rounds in a fresh run folder; return (and save as smoke.json) timings and memory."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    model, description = resolve_model(shape, model, out, device)
    cfg = smoke_config(model, method, device, rounds, trajectories, num_steps, microbatch_size)
    run_dir = out / f"{shape}-{method}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a smoke test measures a fresh run, never a resumed one
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    Trainer(cfg, run_dir, progress=False).run()
    wall = time.perf_counter() - start
    with (run_dir / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    ends = {int(r["round"]): float(r["seconds"]) for r in rows}  # a round's last update ends it
    seconds = [ends[r] for r in sorted(ends)]
    per_round = [b - a for a, b in zip([0.0] + seconds[:-1], seconds)]
    report = {
        "shape": shape,
        "model": description,
        "method": method,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "trajectories": trajectories,
        "num_steps": num_steps,
        "updates_per_round": len(rows) // max(1, len(ends)),
        "seconds_per_round": [round(s, 2) for s in per_round],
        "wall_seconds": round(wall, 2),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
    }
    (out / f"smoke-{shape}-{method}.json").write_text(json.dumps(report, indent=1))
    return report
