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
#: Averaging over 2 gloo processes reassociates float32 sums, and AdamW divides each gradient
#: element by its own running scale, so a near-zero element can move by more than any fixed atol.
#: "The same updates" is therefore checked relative to each logged column's and each weight
#: tensor's own scale; a dropped rank's gradient moves them by O(1) of it (the negative test).
RELATIVE_TOLERANCE = 1e-4


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

#: `nabla train` in every process with a broken gradient average: rank 1's gradients are dropped
RANK_1_GRADIENT_DROPPED = """
import sys
from nabla import cli, distributed

average = distributed.average_gradients

def drops_rank_1(params):
    if distributed.rank() == 1:
        for p in params:
            if p.grad is not None:
                p.grad.zero_()
    average(params)

distributed.average_gradients = drops_rank_1
cli.main(sys.argv[1:])
"""


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖₂ / ‖b‖₂ in float64 (0 where both are exactly zero)."""
    difference, scale = (a.double() - b.double()).norm(), b.double().norm()
    if scale == 0:
        return 0.0 if difference == 0 else float("inf")
    return float(difference / scale)


def assert_same_updates(run, reference):
    """`run` took the updates of `reference`: logged losses, gradient norms and rewards per update,
    and the final LoRA weights, each equal to float tolerance relative to its own scale."""
    logs = [pd.read_csv(r / "train_log.csv") for r in (run, reference)]
    assert len(logs[0]) == len(logs[1])
    for column in ("loss", "grad_norm_lora", "train_reward_mean"):
        a, b = (torch.tensor(log[column].values) for log in logs)
        worst = float((a - b).abs().max() / b.abs().max())
        assert worst <= RELATIVE_TOLERANCE, f"{column}: relative difference {worst:.2e}"
    weights = [load_file(str(r / "final" / "adapter_model.safetensors")) for r in (run, reference)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[1].items():
        difference = relative_difference(weights[0][key], value)
        assert difference <= RELATIVE_TOLERANCE, f"{key}: relative difference {difference:.2e}"


def train(model, out, config, processes, method, script=None, fails=None):
    """`nabla train` in 1 process, or in 2 under torchrun; ``script``: a file run in its place
    (expected to fail unless ``fails`` says otherwise)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    launcher = (launcher if script else launcher + ["--module", "nabla"]) if processes > 1 else [sys.executable, "-m", "nabla"]
    command = launcher + ([str(script)] if script else []) + [
        "train", "--method", method, "--reward", "linear", "--seed", "0",
        "--config", str(config), "--model", str(model), "--out", str(out), "--threads", "1", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    fails = script is not None if fails is None else fails
    assert (result.returncode != 0) == fails, result.stdout[-2000:] + result.stderr[-4000:]


def toy_config(tmp_path, processes, method, options):
    """The run config of one process of 2B / B trajectories (same total per round)."""
    config = dict(scale="toy2d", rounds=3, trajectories_per_round=2 * B // processes, lora_rank=4, lr=2e-3,
                  sampler={"num_steps": 8, "eta": 1.0, "guidance_scale": 1.0}, prompts=[""], validation_prompts=[""],
                  eval_prompts=[""], eval_samples_per_prompt=16, eval_every=0, checkpoint_every=2,
                  methods={method: options})
    path = tmp_path / f"config{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


RESIDUAL = {"transition_fraction": 1.0, "train_on_previous_round": True, "microbatch_size": 4096,
            "reward_scale": 0.5, "output_reg": 1.0, "weighting": "sigma2", "updates_per_round": 1}


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [
    # one round behind (the release's schedule): each rank's checkpoint holds its pending batch
    ("residual_nabla_db", RESIDUAL),
    ("ddpo", {"transition_fraction": 1.0, "microbatch_size": 4096, "updates_per_round": 1, "min_count": 2}),
    ("draft", {"microbatch_size": 64}),
])
def test_two_processes_of_b_take_the_updates_of_one_of_2b(toy_prior_dir, tmp_path, method, options):
    runs = {}
    for processes in (1, 2):
        runs[processes] = tmp_path / f"run{processes}"
        train(toy_prior_dir, runs[processes], toy_config(tmp_path, processes, method, options), processes, method)
    logs = {n: pd.read_csv(run / "train_log.csv") for n, run in runs.items()}
    assert len(logs[1]) == len(logs[2]) == 3 and (logs[1]["grad_norm_lora"] > 0).all()
    assert_same_updates(runs[2], runs[1])
    weights = {n: load_file(str(run / "final" / "adapter_model.safetensors")) for n, run in runs.items()}
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


@pytest.mark.slow
def test_a_gradient_average_that_drops_a_rank_fails_the_same_comparison(toy_prior_dir, tmp_path):
    """The negative control of the test above: its comparison must tell a broken average apart."""
    reference, broken, script = tmp_path / "run1", tmp_path / "broken", tmp_path / "drops_rank_1.py"
    train(toy_prior_dir, reference, toy_config(tmp_path, 1, "residual_nabla_db", RESIDUAL), 1, "residual_nabla_db")
    script.write_text(RANK_1_GRADIENT_DROPPED)
    train(toy_prior_dir, broken, toy_config(tmp_path, 2, "residual_nabla_db", RESIDUAL), 2, "residual_nabla_db",
          script, fails=False)
    with pytest.raises(AssertionError, match="relative difference"):
        assert_same_updates(broken, reference)
