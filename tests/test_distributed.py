"""Data parallelism: 2 processes (torchrun, gloo, CPU) with B trajectories each take the same
updates as 1 process with 2B — same losses and gradient norms at every update, same final weights."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

B = 6
TOLERANCE = dict(rtol=1e-4, atol=1e-6)


def train(model, out, config, processes, method):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "--module"] if processes > 1 else [sys.executable, "-m"]
    command = launcher + ["nabla", "train", "--method", method, "--reward", "linear", "--seed", "0",
                          "--config", str(config), "--model", str(model), "--out", str(out), "--threads", "1", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [
    ("residual_nabla_db", {"transition_fraction": 1.0, "train_on_previous_round": False, "microbatch_size": 4096,
                           "reward_scale": 0.5, "output_reg": 1.0, "weighting": "sigma2"}),
    ("ddpo", {"transition_fraction": 1.0, "microbatch_size": 4096, "updates_per_round": 1, "min_count": 2}),
    ("draft", {"microbatch_size": 64}),
])
def test_two_processes_of_b_take_the_updates_of_one_of_2b(toy_prior_dir, tmp_path, method, options):
    runs = {}
    for processes in (1, 2):
        config = dict(scale="toy2d", updates=3, trajectories_per_round=2 * B // processes, lora_rank=4, lr=2e-3,
                      sampler={"num_steps": 8, "eta": 1.0, "guidance_scale": 1.0}, prompts=[""], eval_prompts=[""],
                      eval_samples_per_prompt=16, eval_every=0, checkpoint_every=2, methods={method: options})
        path = tmp_path / f"config{processes}.yaml"
        path.write_text(yaml.safe_dump(config))
        train(toy_prior_dir, tmp_path / f"run{processes}", path, processes, method)
        runs[processes] = tmp_path / f"run{processes}"
    logs = {n: pd.read_csv(run / "train_log.csv") for n, run in runs.items()}
    assert len(logs[1]) == len(logs[2]) == 3
    for column in ("loss", "grad_norm_lora", "train_reward_mean"):
        torch.testing.assert_close(torch.tensor(logs[2][column].values), torch.tensor(logs[1][column].values), **TOLERANCE)
    assert (logs[1]["grad_norm_lora"] > 0).all()
    weights = {n: load_file(str(run / "final" / "adapter_model.safetensors")) for n, run in runs.items()}
    assert weights[1].keys() == weights[2].keys()
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[2][key], value, **TOLERANCE)
    # rank 1 wrote its own share of the checkpoint beside rank 0's
    assert (runs[2] / "checkpoint" / "rng.rank1.safetensors").exists()
