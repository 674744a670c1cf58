"""Same config and seed, same numbers: every method run twice on one machine with the same thread
count logs the same rows and ends at the same weights, to the last bit.

(Across machines and library builds, float reassociation in their kernels makes runs differ; the
tables' seed spread is the error bar for that, README: "What reproduces".)
"""

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from nabla.config import TrainConfig
from nabla.methods import available_methods
from nabla.trainer import Trainer

#: enough work per op that two threads split it (torch parallelises above ~32k elements)
TOY = dict(scale="toy2d", reward="linear", rounds=3, trajectories_per_round=256,
           sampler={"num_steps": 8, "eta": 1.0, "guidance_scale": 1.0}, prompts=[""], validation_prompts=[""],
           eval_prompts=[""], eval_samples_per_prompt=256, eval_every=2, checkpoint_every=2, lora_rank=4,
           eval_target_beta=0.5, on_nonfinite="stop")
OPTIONS = {"residual_nabla_db": {"reward_scale": 0.5, "transition_fraction": 0.5, "microbatch_size": 4096},
           "nabla_db": {"reward_scale": 0.5, "transition_fraction": 0.5, "microbatch_size": 4096},
           "db_gflownet": {"reward_scale": 0.25, "microbatch_size": 4096}, "ddpo": {"microbatch_size": 4096},
           "draft": {"microbatch_size": 256}, "draft_lv": {"microbatch_size": 256},
           "refl": {"pretrain_data": "prior_mixture", "microbatch_size": 256},
           "adjoint_matching": {"reward_scale": 0.5, "microbatch_size": 4096},
           "rtb": {"reward_scale": 0.5, "transition_fraction": 1.0, "microbatch_size": 256},
           "dpok": {"reward_weight": 1.0, "kl_weight": 2.0, "microbatch_size": 4096},
           "dpok_kl_return": {"reward_weight": 1.0, "kl_weight": 2.0, "microbatch_size": 4096}}


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def run(model, folder, method):
    cfg = TrainConfig(model=str(model), method=method, seed=3, method_options=OPTIONS[method], **TOY)
    Trainer(cfg, folder, progress=False).run()
    logs = [pd.read_csv(folder / name).drop(columns="seconds") for name in ("train_log.csv", "eval_log.csv")]
    weights = {**load_file(str(folder / "final" / "adapter_model.safetensors")),
               **{f"{p.stem}.{k}": v for p in (folder / "final").glob("*.safetensors") if p.name != "adapter_model.safetensors"
                  for k, v in load_file(str(p)).items()}}
    return logs, weights


@pytest.mark.slow
@pytest.mark.parametrize("method", available_methods())
def test_a_rerun_with_the_same_seed_gives_the_same_numbers(toy_prior_dir, tmp_path, method, threads):
    assert torch.get_num_threads() == threads
    (logs_a, weights_a), (logs_b, weights_b) = (run(toy_prior_dir, tmp_path / name, method) for name in ("a", "b"))
    for a, b in zip(logs_a, logs_b):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert weights_a.keys() == weights_b.keys() and len(weights_a) > 0
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert len(logs_a[0]) >= 3  # it trained
