"""The shared training loop: methods plug in, runs resume exactly, non-finite values stop it."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from nabla.checkpoint import CsvLog
from nabla.cli import main
from nabla.config import TrainConfig, load_train_config
from nabla.methods import available_methods, subsample_transitions
from nabla.options import ConfigError
from nabla.trainer import NonFiniteError, Trainer

TOY = dict(
    scale="toy2d", rounds=6, trajectories_per_round=32, sampler={"num_steps": 8, "eta": 1.0, "guidance_scale": 1.0},
    prompts=[""], validation_prompts=[""], eval_prompts=[""], eval_samples_per_prompt=16, eval_every=3,
    checkpoint_every=2,
)
GFN = dict(reward_scale=0.5, output_reg=1.0, transition_fraction=0.25, train_on_previous_round=True, weighting="sigma2",
           updates_per_round=1)


def toy_config(model, method="residual_nabla_db", **overrides):
    values = {**TOY, "model": str(model), "method": method, "reward": "linear", "method_options": dict(GFN)}
    values.update(overrides)
    return TrainConfig(**values)


def test_subsample_keeps_the_last_transition_and_one_per_stratum():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        steps = subsample_transitions(50, 0.1, stratified=True, generator=g)
        assert len(steps) == 5 and steps[-1] == 49
        # 49 earlier transitions cut into 4 strata at floor(49 k / 4): [0,12) [12,24) [24,36) [36,49)
        for step, (low, high) in zip(steps[:-1].tolist(), [(0, 12), (12, 24), (24, 36), (36, 49)]):
            assert low <= step < high
    unstratified = subsample_transitions(50, 0.2, stratified=False, generator=g)
    assert len(set(unstratified.tolist())) == 10 and unstratified[-1] == 49
    assert subsample_transitions(50, 0.01, True, g).tolist() == [49]
    with pytest.raises(ValueError, match="fraction"):
        subsample_transitions(50, 0.0, True, g)


def test_registry_names_the_known_methods_for_a_typo(toy_prior_dir, tmp_path):
    assert {"residual_nabla_db", "nabla_db"} <= set(available_methods())
    with pytest.raises(ValueError, match="known methods: .*residual_nabla_db"):
        Trainer(toy_config(toy_prior_dir, method="residual_nabla"), tmp_path)
    with pytest.raises(ConfigError, match="NablaDBOptions: unknown key 'reward_scal'"):
        Trainer(toy_config(toy_prior_dir, method_options={"reward_scal": 1.0}), tmp_path)


def test_run_writes_config_logs_checkpoint_and_final(toy_prior_dir, tmp_path):
    summary = Trainer(toy_config(toy_prior_dir, method_options={**GFN, "updates_per_round": 2}), tmp_path,
                      progress=False).run()
    assert summary["rounds"] == 6 and summary["updates"] == 12 and summary["trajectories"] == 6 * 32
    assert summary["target"] == "tilted" and summary["target_beta"] == 0.5
    config = (tmp_path / "config.yaml").read_text()
    assert "reward_scale: 0.5" in config and "stratified: true" in config  # method defaults resolved
    log = pd.read_csv(tmp_path / "train_log.csv")
    for column in ("step", "round", "seconds", "train_reward_mean", "loss_forward", "loss_reverse", "grad_norm_lora",
                   "grad_norm_flow"):
        assert column in log
    assert list(log["step"]) == list(range(1, 13)) and list(log["round"]) == [r for r in range(1, 7) for _ in (0, 1)]
    evals = pd.read_csv(tmp_path / "eval_log.csv")
    assert list(evals["round"]) == [0, 0, 3, 3, 6, 6] and list(evals["split"]) == ["validation", "evaluation"] * 3
    assert list(evals["trajectories"]) == [0, 0, 96, 96, 192, 192]
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()
    assert (tmp_path / "final" / "flow.safetensors").exists()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["round"] == 6


def test_killed_run_resumes_to_the_same_weights(toy_prior_dir, tmp_path, monkeypatch):
    whole = Trainer(toy_config(toy_prior_dir), tmp_path / "whole", progress=False)
    whole.run()

    original = Trainer._update
    calls = {"n": 0}

    def dies_at_update_5(self, micro):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # a kill after the checkpoint of update 4
        return original(self, micro)

    monkeypatch.setattr(Trainer, "_update", dies_at_update_5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(toy_config(toy_prior_dir), tmp_path / "split", progress=False).run()
    assert json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())["round"] == 4
    monkeypatch.setattr(Trainer, "_update", original)
    resumed = Trainer(toy_config(toy_prior_dir), tmp_path / "split", progress=False)
    summary = resumed.run()
    assert summary["rounds"] == 6

    a = load_file(str(tmp_path / "whole" / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    flows = [load_file(str(tmp_path / run / "final" / "flow.safetensors")) for run in ("whole", "split")]
    for key in flows[0]:
        torch.testing.assert_close(flows[0][key], flows[1][key], rtol=0, atol=0)
    for name in ("train_log.csv", "eval_log.csv"):  # the same rows, none duplicated by the resume
        logs = [pd.read_csv(tmp_path / run / name).drop(columns="seconds") for run in ("whole", "split")]
        pd.testing.assert_frame_equal(logs[0], logs[1])


def test_a_resumed_log_keeps_complete_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "log.csv"
    log = CsvLog(path, None)
    for r in range(1, 6):
        log.write({"step": r, "round": r, "loss": 0.5 * r})
    with path.open("a") as f:
        f.write("6,6,3.")  # a row a kill cut short
    CsvLog(path, 3).write({"step": 4, "round": 4, "loss": 2.0})
    assert path.read_text().splitlines() == ["step,round,loss", "1,1,0.5", "2,2,1.0", "3,3,1.5", "4,4,2.0"]
    path.write_text("step,round,loss\n1,1,0.5\n2")  # cut inside the first field of a row
    CsvLog(path, 1)
    assert path.read_text().splitlines() == ["step,round,loss", "1,1,0.5"]


class NaNAtRound:
    """Wraps a reward so that its n-th sampling-time (gradient-free) call returns NaN."""

    def __init__(self, reward, bad_call):
        self.reward, self.bad_call, self.calls = reward, bad_call, 0

    def __call__(self, samples, prompts):
        values = self.reward(samples, prompts)
        if torch.is_grad_enabled():  # a loss's reward gradient, not a rollout's reward
            return values
        self.calls += 1
        return values * float("nan") if self.calls == self.bad_call else values


def test_nan_reward_stops_the_run_and_leaves_no_checkpoint_of_it(toy_prior_dir, tmp_path):
    trainer = Trainer(toy_config(toy_prior_dir, checkpoint_every=1, eval_every=0, eval_splits=[]), tmp_path,
                      progress=False)
    trainer.method.reward = NaNAtRound(trainer.method.reward, bad_call=4)  # NaN in round 4 (before update 4)
    with pytest.raises(NonFiniteError, match="rewards are non-finite in round 4 \\(before update 4\\)"):
        trainer.run()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    assert not (tmp_path / "done.json").exists() and not (tmp_path / "checkpoint.tmp").exists()


def test_nan_loss_is_caught_before_the_optimiser_step(toy_prior_dir, tmp_path):
    trainer = Trainer(toy_config(toy_prior_dir, method_options={**GFN, "reward_scale": float("nan")}), tmp_path, progress=False)
    before = [p.detach().clone() for p in trainer.backend.lora_parameters()]
    with pytest.raises(NonFiniteError, match="non-finite loss .* at update 1"):
        trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.backend.lora_parameters()))
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize("method", ["residual_nabla_db", "nabla_db"])
def test_gflownet_methods_train_on_toy2d(toy_prior_dir, tmp_path, method):
    trainer = Trainer(toy_config(toy_prior_dir, method=method, rounds=3), tmp_path, progress=False)
    trainer.run()
    x, t = torch.randn(64, 2), torch.full((64,), 500)
    with torch.no_grad():
        tuned = trainer.backend.model_output(x, t, None)
        with trainer.backend.adapter(False):
            prior = trainer.backend.model_output(x, t, None)
    assert (tuned - prior).abs().max() > 1e-5


@pytest.mark.parametrize("method", ["residual_nabla_db", "nabla_db"])
def test_gflownet_methods_train_on_the_sd_path(random_sd_dir, tmp_path, method):
    cfg = TrainConfig(
        scale="tiny", model=str(random_sd_dir), method=method, reward="colorfulness", rounds=2,
        trajectories_per_round=2, sampler={"num_steps": 3, "eta": 1.0, "guidance_scale": 3.0},
        prompts=["cat", "heart"], validation_prompts=["red"], eval_prompts=["face"], eval_samples_per_prompt=2,
        eval_every=0, checkpoint_every=2, lora_rank=2,
        method_options={"transition_fraction": 0.5, "microbatch_size": 2, "flow_channels": [32, 32], "updates_per_round": 1},
    )
    trainer = Trainer(cfg, tmp_path, progress=False)
    summary = trainer.run()
    assert summary["updates"] == 2
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 3
    assert all(p.grad is not None for p in trainer.method.flow.parameters() if p.requires_grad)


def test_reverse_loss_into_the_policy_uses_a_double_backward(random_sd_dir, tmp_path):
    """The non-release option: the reverse score keeps its graph into the LoRA (double backward)."""
    cfg = TrainConfig(
        scale="tiny", model=str(random_sd_dir), method="residual_nabla_db", reward="colorfulness", rounds=1,
        trajectories_per_round=1, sampler={"num_steps": 2, "eta": 1.0, "guidance_scale": 2.0},
        prompts=["cat"], eval_prompts=["cat"], eval_samples_per_prompt=1, eval_every=0, eval_splits=[], lora_rank=2,
        method_options={"transition_fraction": 1.0, "reverse_trains_policy": True, "train_on_previous_round": False},
    )
    Trainer(cfg, tmp_path, progress=False).run()


def test_cli_train_saves_the_resolved_config(toy_prior_dir, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(
        "scale: toy2d\ntrajectories_per_round: 16\nsampler: {num_steps: 4, guidance_scale: 1.0}\n"
        "prompts: ['']\nvalidation_prompts: ['']\neval_prompts: ['']\neval_samples_per_prompt: 8\ncheckpoint_every: 1\n"
        "methods:\n  nabla_db: {reward_scale: 0.25}\nrewards:\n  quadratic: {center: [1.0, 0.0]}\n"
    )
    main(["train", "--method", "nabla_db", "--reward", "quadratic", "--seed", "3", "--config", str(config),
          "--out", str(tmp_path / "run"), "--rounds", "2", "--model", str(toy_prior_dir), "--no-progress"])
    cfg = load_train_config(tmp_path / "run" / "config.yaml", "nabla_db", "quadratic", 3)
    assert cfg.seed == 3 and cfg.rounds == 2 and cfg.method_options["reward_scale"] == 0.25
    assert cfg.reward_options == {"center": [1.0, 0.0]}


@pytest.mark.parametrize("method", ["residual_nabla_db", "nabla_db", "ddpo", "db_gflownet"])
def test_density_based_methods_refuse_a_deterministic_sampler(toy_prior_dir, tmp_path, method):
    cfg = toy_config(toy_prior_dir, method=method, method_options={},
                     sampler={"num_steps": 4, "eta": 0.0, "guidance_scale": 1.0})
    with pytest.raises(ValueError, match=f"{method} needs a stochastic sampler"):
        Trainer(cfg, tmp_path)


def test_stop_on_nonfinite_finishes_with_the_last_finite_weights(toy_prior_dir, tmp_path):
    trainer = Trainer(toy_config(toy_prior_dir, checkpoint_every=1, eval_every=0, eval_splits=[], on_nonfinite="stop"),
                      tmp_path, progress=False)
    trainer.method.reward = NaNAtRound(trainer.method.reward, bad_call=4)  # NaN before update 4
    summary = trainer.run()
    assert summary["updates"] == 3 and summary["diverged_at"] == 4
    assert "non-finite" in summary["diverged"]
    final = load_file(str(tmp_path / "final" / "adapter_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in final.values())


def test_toy2d_evaluation_logs_the_distance_to_the_exact_target(toy_prior_dir, tmp_path):
    Trainer(toy_config(toy_prior_dir, eval_target_beta=0.5), tmp_path, progress=False).run()
    log = pd.read_csv(tmp_path / "eval_log.csv")
    assert list(log["round"]) == [0, 0, 3, 3, 6, 6]
    # the prior is far from the tilted target (ED ≈ 1.3 for the true mixture), and TV is a fraction
    assert (log["energy_distance_target"].iloc[:2] > 0.5).all()
    assert ((log["mass_tv_target"] > 0) & (log["mass_tv_target"] < 1)).all()
    # residual ∇-DB's own target is the tilt at its own β (0.5): the same exact sample, the same distance
    assert (log["energy_distance_own_target"] == log["energy_distance_target"]).all()


def test_eval_target_beta_needs_a_reward_with_an_exact_target(random_sd_dir, tmp_path):
    cfg = TrainConfig(scale="tiny", model=str(random_sd_dir), reward="colorfulness", eval_target_beta=0.5,
                      rounds=1, trajectories_per_round=2)
    with pytest.raises(ValueError, match="eval_target_beta needs the toy2d scale.*colorfulness"):
        Trainer(cfg, tmp_path)


def test_a_folder_of_another_config_is_refused_or_restarted(toy_prior_dir, tmp_path):
    from nabla.trainer import ConfigChangedError

    Trainer(toy_config(toy_prior_dir, rounds=2), tmp_path / "run", progress=False).run()
    changed = toy_config(toy_prior_dir, rounds=2, method_options={**GFN, "reward_scale": 2.0})
    with pytest.raises(ConfigChangedError, match="changed: method_options.reward_scale"):
        Trainer(changed, tmp_path / "run", progress=False).run()
    # restart: the stale checkpoint and result go, and the run equals one made in a fresh folder
    Trainer(changed, tmp_path / "run", progress=False, on_config_change="restart").run()
    Trainer(changed, tmp_path / "fresh", progress=False).run()
    restarted, fresh = (load_file(tmp_path / d / "final" / "adapter_model.safetensors") for d in ("run", "fresh"))
    assert all(torch.equal(restarted[k], fresh[k]) for k in fresh)
    assert "reward_scale: 2.0" in (tmp_path / "run" / "config.yaml").read_text()
    # a change that alters no number (log interval) still resumes
    Trainer(toy_config(toy_prior_dir, rounds=2, method_options={**GFN, "reward_scale": 2.0}, log_every=1),
            tmp_path / "run", progress=False).run()
