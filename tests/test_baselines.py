"""The baselines: their losses against hand-computed values, DRaFT's truncation, and short runs."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from baselines.db_gflownet import annealed_reward_scale, db_residual
from baselines.ddpo import DDPO, DDPOOptions, PerPromptStatTracker, ppo_clip_loss
from baselines.refl import ReFLOptions, denoising_loss, refl_loss, stop_step_range
from nabla.config import TrainConfig
from nabla.methods import SamplerConfig
from nabla.options import ConfigError
from nabla.trainer import Trainer

torch.set_num_threads(1)

BASELINES = ["ddpo", "draft", "draft_lv", "refl", "db_gflownet", "adjoint_matching", "rtb", "dpok", "dpok_kl_return"]


# -- DDPO -----------------------------------------------------------------------------------------
def test_ppo_clip_loss_takes_the_pessimistic_side_of_the_clip():
    ratios = torch.tensor([1.1, 1.5, 0.5, 1.5, 0.5])
    advantages = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    log_prob = ratios.log().requires_grad_(True)
    # ε = 0.2: inside (−1.1); A > 0 above 1 + ε → clipped (−1.2); A > 0 below → unclipped (−0.5);
    # A < 0 above → unclipped (1.5); A < 0 below 1 − ε → clipped (0.8)
    per_sample = [-1.1, -1.2, -0.5, 1.5, 0.8]
    for i, expected in enumerate(per_sample):
        value = ppo_clip_loss(log_prob[i : i + 1], torch.zeros(1), advantages[i : i + 1], 0.2)
        assert value.item() == pytest.approx(expected)
    loss = ppo_clip_loss(log_prob, torch.zeros(5), advantages, 0.2)
    assert loss.item() == pytest.approx(sum(per_sample) / 5)
    loss.backward()
    # d(−A ρ)/d log π = −A ρ where unclipped, 0 where the clipped branch is taken
    torch.testing.assert_close(log_prob.grad, torch.tensor([-1.1, 0.0, -0.5, 1.5, 0.0]) / 5)


def test_ppo_clip_loss_at_ratio_one_is_minus_the_mean_advantage():
    loss = ppo_clip_loss(torch.full((2,), -3.0), torch.full((2,), -3.0), torch.tensor([2.0, -1.0]), 1e-4)
    assert loss.item() == pytest.approx(-0.5)


def test_stat_tracker_uses_batch_statistics_until_a_prompt_has_min_count_rewards():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    adv = tracker.update(["a", "a", "b"], torch.tensor([1.0, 3.0, 5.0]))
    # "a" has 2 buffered rewards: its own mean 2, std 1; "b" has 1: the batch's mean 3, std √(8/3)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 2 / math.sqrt(8 / 3)]), atol=1e-5, rtol=0)
    adv = tracker.update(["a"], torch.tensor([5.0]))  # buffer [1, 3, 5]
    assert adv.item() == pytest.approx(2 / math.sqrt(8 / 3), abs=1e-5)
    adv = tracker.update(["a"], torch.tensor([10.0]))  # the oldest (1) leaves: [3, 5, 10]
    assert tracker.buffers["a"].tolist() == [3.0, 5.0, 10.0]
    assert adv.item() == pytest.approx((10 - 6) / math.sqrt(26 / 3), abs=1e-5)


def test_ddpo_advantages_are_clipped_at_five():
    method = DDPO(DDPOOptions(), None, None, SamplerConfig())
    rewards = torch.tensor([0.0] * 30 + [1.0])  # the outlier's z-score is √30 ≈ 5.48
    adv = method.advantages(["p"] * 31, rewards)
    assert adv[-1].item() == pytest.approx(5.0)
    assert adv[0].item() == pytest.approx(-1 / math.sqrt(30), abs=1e-5)


def test_ddpo_buffers_survive_a_safetensors_round_trip(tmp_path):
    method = DDPO(DDPOOptions(buffer_size=4, min_count=2), None, None, SamplerConfig())
    method.advantages(["cat", "", "héart", "cat"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    method.advantages(["cat"] * 4, torch.tensor([5.0, 6.0, 7.0, 8.0]))
    save_file(method.state_dict(), str(tmp_path / "state.safetensors"))
    restored = DDPO(DDPOOptions(buffer_size=4, min_count=2), None, None, SamplerConfig())
    restored.load_state_dict(load_file(str(tmp_path / "state.safetensors")))
    assert list(restored.tracker.buffers) == ["cat", "", "héart"]
    for prompt, values in method.tracker.buffers.items():
        assert torch.equal(restored.tracker.buffers[prompt], values)
    batch = (["héart", "cat", ""], torch.tensor([0.5, 9.0, 2.5]))
    assert torch.equal(method.advantages(*batch), restored.advantages(*batch))
    empty = DDPO(DDPOOptions(), None, None, SamplerConfig())
    save_file(empty.state_dict(), str(tmp_path / "empty.safetensors"))
    empty.load_state_dict(load_file(str(tmp_path / "empty.safetensors")))
    assert empty.tracker.buffers == {}


# -- ReFL and DB ----------------------------------------------------------------------------------
def test_refl_loss_forms():
    rewards = torch.tensor([1.0, 3.0])
    assert refl_loss(rewards, "neg_reward", 2.0).item() == pytest.approx(-2.0)
    assert refl_loss(rewards, "relu", 2.0).item() == pytest.approx(0.5)  # ReLU(1), ReLU(−1)
    assert stop_step_range(40, 0.75, 0.975) == (30, 39)  # the release's [30, 39] of 40
    assert stop_step_range(4, 0.75, 0.975) == (3, 3)
    assert denoising_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.5)


def test_refl_defaults_are_the_release_loss():
    options = ReFLOptions()
    assert (options.loss_form, options.relu_target, options.reward_loss_weight) == ("relu", 2.0, 1e-3)
    with pytest.raises(ConfigError) as error:
        ReFLOptions(loss_form="hinge", pretrain_data="laion")
    assert len(error.value.problems) == 2


def test_refl_pretraining_loss_is_the_denoising_loss_on_exact_prior_samples(toy_prior_dir, tmp_path):
    options = {"pretrain_data": "prior_mixture", "microbatch_size": 4}
    trainer = Trainer(toy_config(toy_prior_dir, "refl", method_options=options), tmp_path)
    batch = trainer.method.collect([""] * 4, [1, 2, 3, 4])
    (micro,) = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0]
    pre = micro.pretrain
    assert pre.x_t.shape == (4, 2) and pre.t.shape == (4,) and pre.prompts == [""] * 4
    out = trainer.method.loss(micro)
    # with a fresh LoRA θ is the prior: its denoising loss on the prior's own data is the pretraining loss
    with torch.no_grad():
        expected = denoising_loss(trainer.backend.model_output(pre.x_t, pre.t, None), pre.noise).item()
    assert out.logs["loss_pretrain"] == pytest.approx(expected)
    assert out.loss.item() == pytest.approx(1e-3 * out.logs["loss_reward"] + expected)
    # the same round's generator draws the same pretraining batch: a resumed run trains on it again
    (again,) = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0]
    assert torch.equal(again.pretrain.x_t, pre.x_t) and torch.equal(again.pretrain.noise, pre.noise)


def test_db_residual_vanishes_for_a_flow_in_detailed_balance():
    assert db_residual(torch.tensor(1.0), torch.tensor(-2.0), torch.tensor(0.5), torch.tensor(-1.0)).item() == -0.5
    # A reversible AR(1) chain: F = N(0, 1) at both times, P_F(x'|x) = N(ρx, 1−ρ²), P_B(x|x') = N(ρx', 1−ρ²)
    rho, gen = 0.6, torch.Generator().manual_seed(0)
    x, x_prev = torch.randn(8, generator=gen), torch.randn(8, generator=gen)

    def log_normal(value, mean, var):
        return torch.distributions.Normal(mean, math.sqrt(var)).log_prob(value)

    log_pf, log_pb = log_normal(x_prev, rho * x, 1 - rho**2), log_normal(x, rho * x_prev, 1 - rho**2)
    residual = db_residual(log_normal(x, 0.0, 1.0), log_pf, log_normal(x_prev, 0.0, 1.0), log_pb)
    torch.testing.assert_close(residual, torch.zeros(8), atol=1e-5, rtol=0)
    wrong = db_residual(log_normal(x, 0.0, 2.0), log_pf, log_normal(x_prev, 0.0, 1.0), log_pb)
    assert wrong.abs().max() > 1e-2


def test_reward_scale_is_annealed_linearly_then_held():
    assert [annealed_reward_scale(2.0, 0.0, r, 4) for r in (0, 1, 4, 9)] == [0.0, 0.5, 2.0, 2.0]
    assert annealed_reward_scale(2.0, 0.0, 0, 0) == 2.0


def test_db_gflownet_anneals_over_half_of_the_run_one_beta_per_round(toy_prior_dir, tmp_path):
    options = {"transition_fraction": 0.5, "microbatch_size": 64, "reward_scale": 1.0}
    trainer = Trainer(toy_config(toy_prior_dir, "db_gflownet", rounds=8, method_options=options), tmp_path)
    batch = trainer.method.collect(["", ""], [1, 2])
    betas = []
    for _ in range(6):
        plan = trainer.method.plan(batch, torch.Generator().manual_seed(0))
        assert len(plan) == 2  # the release's two optimiser steps per round
        betas.append({m.reward_scale for update in plan for m in update})
    assert betas == [{0.0}, {0.25}, {0.5}, {0.75}, {1.0}, {1.0}]


# -- DRaFT truncation ------------------------------------------------------------------------------
def toy_config(model, method, **overrides):
    values = dict(
        scale="toy2d", model=str(model), method=method, reward="linear", rounds=2, trajectories_per_round=4,
        sampler={"num_steps": 4, "eta": 1.0, "guidance_scale": 1.0}, prompts=[""], validation_prompts=[""],
        eval_prompts=[""], eval_samples_per_prompt=4, eval_every=0, checkpoint_every=1, lora_rank=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


def lora_grads(trainer, micro):
    for p in trainer.backend.lora_parameters():
        p.grad = None
    out = trainer.method.loss(micro)
    out.loss.backward()
    return out, [p.grad.clone() for p in trainer.backend.lora_parameters()]


def test_draft_k_differentiates_only_the_last_k_steps(toy_prior_dir, tmp_path):
    k = 2
    trainer = Trainer(toy_config(toy_prior_dir, "draft", method_options={"truncation_steps": k}), tmp_path)
    with torch.no_grad():  # a non-zero LoRA B so that every LoRA weight gets a gradient
        for p in trainer.backend.lora_parameters():
            p.normal_(0.0, 0.1)
    batch = trainer.method.collect(["", "", ""], [1, 2, 3])
    (micro,) = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0]

    grad_calls = []
    hook = trainer.backend.model.register_forward_hook(lambda *_: grad_calls.append(torch.is_grad_enabled()))
    out, grads = lora_grads(trainer, micro)
    hook.remove()
    assert grad_calls == [True] * k  # exactly K denoiser evaluations carry a graph
    # the tail re-runs the rollout's own last K steps: the same x_0, hence the same reward
    assert out.logs["reward_mean"] == pytest.approx(batch.rewards.mean().item(), abs=1e-5)
    assert all(g.abs().sum() > 0 for g in grads)

    # the chain before the last K steps never enters the gradient
    num_steps = batch.trajectory.timesteps.numel()
    batch.trajectory.latents[: num_steps - k] = 100.0
    (same_micro,) = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0]
    for a, b in zip(grads, lora_grads(trainer, same_micro)[1]):
        assert torch.equal(a, b)
    # while the start of the last K steps does
    batch.trajectory.latents[num_steps - k] += 0.5
    (moved,) = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0]
    assert any(not torch.equal(a, b) for a, b in zip(grads, lora_grads(trainer, moved)[1]))

    trainer.method.options.gradient_checkpointing = True
    for a, b in zip(grads, lora_grads(trainer, micro)[1]):
        torch.testing.assert_close(a, b)


def test_draft_lv_denoises_n_renoised_copies_of_x0(toy_prior_dir, tmp_path):
    trainer = Trainer(toy_config(toy_prior_dir, "draft_lv", method_options={"renoise_samples": 3}), tmp_path)
    batch = trainer.method.collect(["", ""], [1, 2])
    (tail,) = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0]
    assert tail.x_start.shape == (6, 2) and tail.noise.shape == (1, 6, 2) and tail.num_samples == 2
    assert tail.timesteps.tolist() == batch.trajectory.timesteps[-1:].tolist()
    # every copy is a draw from q(x_t | x_0) around its own sample: √ᾱ x_0 + √(1−ᾱ) ε
    alpha_bar = trainer.backend.scheduler.alphas_cumprod[int(tail.timesteps[0])]
    x0 = batch.trajectory.x0.repeat(3, 1)
    eps = (tail.x_start - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    assert not torch.allclose(eps[:2], eps[2:4])
    grad_calls = []
    hook = trainer.backend.model.register_forward_hook(lambda *_: grad_calls.append(torch.is_grad_enabled()))
    trainer.method.loss(tail).loss.backward()
    hook.remove()
    assert grad_calls == [True]  # one batched last step for all n copies


# -- short runs through the trainer ---------------------------------------------------------------
RUN_OPTIONS = {
    "ddpo": {"microbatch_size": 4},
    "draft": {"truncation_steps": 2, "microbatch_size": 2},
    "draft_lv": {"microbatch_size": 2},
    "refl": {"stop_min": 0.5, "stop_max": 1.0, "microbatch_size": 2},
    "db_gflownet": {"transition_fraction": 0.5, "microbatch_size": 4, "reward_scale": 0.5},
    "adjoint_matching": {"reward_scale": 0.5, "microbatch_size": 4},
    "rtb": {"reward_scale": 0.5, "transition_fraction": 0.5, "microbatch_size": 2},
    "dpok": {"reward_weight": 1.0, "kl_weight": 2.0, "transition_fraction": 1.0, "microbatch_size": 4},
    "dpok_kl_return": {"reward_weight": 1.0, "kl_weight": 2.0, "transition_fraction": 1.0, "microbatch_size": 4},
}
#: optimiser steps per round at those options (the releases': DDPO and DB-GFlowNet take 2)
UPDATES_PER_ROUND = {"ddpo": 2, "draft": 1, "draft_lv": 1, "refl": 1, "db_gflownet": 2, "adjoint_matching": 1,
                     "rtb": 5, "dpok": 5, "dpok_kl_return": 5}


def assert_lora_moved(trainer, before):
    after = trainer.backend.lora_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("method", BASELINES)
def test_baselines_train_on_toy2d(toy_prior_dir, tmp_path, method):
    trainer = Trainer(toy_config(toy_prior_dir, method, method_options=RUN_OPTIONS[method]), tmp_path, progress=False)
    before = [p.detach().clone() for p in trainer.backend.lora_parameters()]
    summary = trainer.run()
    assert summary["rounds"] == 2 and summary["updates"] == 2 * UPDATES_PER_ROUND[method]
    assert len((tmp_path / "train_log.csv").read_text().splitlines()) == 1 + summary["updates"]
    assert_lora_moved(trainer, before)


@pytest.mark.parametrize("method", BASELINES)
def test_baselines_train_on_the_sd_path(random_sd_dir, tmp_path, method):
    cfg = TrainConfig(
        scale="tiny", model=str(random_sd_dir), method=method, reward="colorfulness", rounds=2,
        trajectories_per_round=2, sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0},
        prompts=["cat", "heart"], eval_prompts=["face"], eval_samples_per_prompt=1, eval_every=0, eval_splits=[],
        checkpoint_every=2, lora_rank=2, method_options={**RUN_OPTIONS[method], "microbatch_size": 2},
    )
    trainer = Trainer(cfg, tmp_path, progress=False)
    before = [p.detach().clone() for p in trainer.backend.lora_parameters()]
    assert trainer.run()["updates"] == 2 * UPDATES_PER_ROUND[method]
    assert_lora_moved(trainer, before)


def test_ddpo_and_db_state_is_restored_from_the_checkpoint(toy_prior_dir, tmp_path):
    for method in ("ddpo", "db_gflownet"):
        cfg = toy_config(toy_prior_dir, method, rounds=4, method_options=RUN_OPTIONS[method])
        finished = Trainer(cfg, tmp_path / method, progress=False)
        finished.run()
        resumed = Trainer(cfg, tmp_path / method, progress=False)
        assert resumed.load_checkpoint()
        expected, state = finished.method.state_dict(), resumed.method.state_dict()
        assert expected.keys() == state.keys()
        assert all(torch.equal(expected[k], state[k]) for k in expected)
    assert int(finished.method.state_dict()["rounds_done"]) == 4


@pytest.mark.slow
def test_refl_pretrains_on_the_tiny_priors_openmoji_images(random_sd_dir, openmoji_cache, tmp_path):
    cfg = TrainConfig(
        scale="tiny", model=str(random_sd_dir), method="refl", reward="colorfulness", rounds=1,
        trajectories_per_round=2, sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0},
        prompts=["cat", "heart"], eval_prompts=["face"], eval_splits=[], lora_rank=2,
        method_options={"pretrain_data": "openmoji", "pretrain_data_cache": str(openmoji_cache), "microbatch_size": 2},
    )
    trainer = Trainer(cfg, tmp_path, progress=False)
    data = trainer.method.data
    assert data.latents.shape[1:] == (4, 16, 16) and len(data.captions) == len(data.latents) > 100
    batch = trainer.method.collect(["cat", "heart"], [1, 2])
    (micro,) = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0]
    assert all(p in data.captions for p in micro.pretrain.prompts)  # the prior's own captions
    assert "loss_pretrain" in trainer.method.loss(micro).logs
