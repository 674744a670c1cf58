"""Data parallelism: 2 processes (torchrun, gloo, CPU) with B trajectories each take the same
updates as 1 process with 2B — same losses and gradient norms at every update, same final weights;
and 2 processes killed after a checkpoint resume, each from its own share, to the same weights."""

import json
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


#: `nabla train` in every process, killed (SystemExit) when it starts update 3
KILLED_AT_UPDATE_3 = """
import sys
from nabla import cli
from nabla.trainer import Trainer

update, calls = Trainer._update, [0]

def dies_at_update_3(self, microbatches):
    calls[0] += 1
    if calls[0] == 3:
        raise SystemExit("killed at update 3")
    return update(self, microbatches)

Trainer._update = dies_at_update_3
cli.main(sys.argv[1:])
"""


def train(model, out, config, processes, method, script=None):
    """`nabla train` in 1 process, or in 2 under torchrun; ``script``: a file run in its place."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    launcher = (launcher if script else launcher + ["--module", "nabla"]) if processes > 1 else [sys.executable, "-m", "nabla"]
    command = launcher + ([str(script)] if script else []) + [
        "train", "--method", method, "--reward", "linear", "--seed", "0",
        "--config", str(config), "--model", str(model), "--out", str(out), "--threads", "1", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (result.returncode != 0) == (script is not None), result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [
    # one round behind (the release's schedule): each rank's checkpoint holds its pending batch
    ("residual_nabla_db", {"transition_fraction": 1.0, "train_on_previous_round": True, "microbatch_size": 4096,
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
    if method == "residual_nabla_db":
        assert (runs[2] / "checkpoint" / "pending.rank1.json").exists()
        # both processes killed after the checkpoint of update 2, then resumed by 2 processes
        resumed, script = tmp_path / "resumed", tmp_path / "killed_at_update_3.py"
        script.write_text(KILLED_AT_UPDATE_3)
        train(toy_prior_dir, resumed, tmp_path / "config2.yaml", 2, method, script)
        assert json.loads((resumed / "checkpoint" / "state.json").read_text())["step"] == 2
        assert not (resumed / "final").exists()
        train(toy_prior_dir, resumed, tmp_path / "config2.yaml", 2, method)
        again = pd.read_csv(resumed / "train_log.csv")
        torch.testing.assert_close(torch.tensor(again["loss"].values), torch.tensor(logs[2]["loss"].values), rtol=0, atol=0)
        for key, value in load_file(str(resumed / "final" / "adapter_model.safetensors")).items():
            torch.testing.assert_close(value, weights[2][key], rtol=0, atol=0)
