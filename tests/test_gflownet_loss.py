"""The ∇-GFlowNet methods' loss against a plain full-batch computation, and its denoiser passes.

The method's loss splits a micro-batch into transitions with and without a reverse term and gets
s_θ^rev + γβ∇r(x_t) from one VJP; the reference here computes every score separately, on the
whole batch, with autograd of the Gaussian log-densities and the reward.
"""

import pytest
import torch

from nabla import diffusion, objectives
from nabla.bench import count_denoiser_passes, denoiser_passes
from nabla.config import TrainConfig
from nabla.trainer import Trainer, round_generator

OPTIONS = dict(reward_scale=0.7, pretrained_strength=0.6, output_reg=3.0, transition_fraction=0.25, train_on_previous_round=False,
               weighting="sigma2", reverse_loss_weight=2.0, updates_per_round=1, microbatch_size=4096)


def toy_trainer(model, tmp_path, method="residual_nabla_db", sd=False, **options):
    values = dict(
        scale="toy2d", model=str(model), method=method, reward="linear", rounds=2, trajectories_per_round=6,
        sampler={"num_steps": 8, "eta": 1.0, "guidance_scale": 1.0}, prompts=[""], validation_prompts=[""],
        eval_prompts=[""], eval_samples_per_prompt=4, eval_every=0, lora_rank=2, method_options={**OPTIONS, **options},
    )
    if sd:
        values.update(scale="tiny", reward="colorfulness", prompts=["cat", "heart"], validation_prompts=["red"],
                      eval_prompts=["face"],
                      sampler={"num_steps": 4, "eta": 1.0, "guidance_scale": 3.0})
        values["method_options"]["flow_channels"] = [8, 16]
    trainer = Trainer(TrainConfig(**values), tmp_path / "run", progress=False)
    # Move θ away from the prior and g_φ away from zero, so that every term is non-trivial.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trainer.backend.lora_parameters():
            p.add_(0.05 * torch.randn_like(p))
        for module in trainer.method.modules().values():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return trainer


def micro_batch(trainer):
    batch = trainer._collect()
    micro = trainer.method.plan(batch, round_generator(0, 0))[0][0]
    assert micro.is_last.any() and (~micro.is_last).any()
    return micro


def reference_loss(method, tr):
    """Residual ∇-DB or ∇-DB on the whole batch, each score by its own autograd call."""
    o, backend, eta = method.options, method.backend, method.sampler.eta
    ptype = backend.prediction_type
    a_t, a_prev, std = method.transition_coefficients(tr)
    cond, uncond = method.conditions(tr.prompts)
    reward = lambda x0: method.reward(backend.decode(x0), tr.prompts)  # noqa: E731

    x = tr.x_t.detach().clone().requires_grad_(True)
    out = method.guided(x, tr.t, cond, uncond)
    mean = diffusion.ddim_mean(out, x, a_t, a_prev, eta, ptype)
    score_fwd = diffusion.forward_score(tr.x_prev, mean, std)
    log_p = diffusion.gaussian_log_prob(tr.x_prev, mean, std).sum()
    (score_rev,) = torch.autograd.grad(log_p, x, retain_graph=True, create_graph=o.reverse_trains_policy)
    (grad_t,) = torch.autograd.grad(reward(diffusion.predict_x0(out, x, a_t, ptype)).sum(), x, retain_graph=True)

    if method.name == "residual_nabla_db":
        xp = tr.x_t.detach().clone().requires_grad_(True)
        with backend.adapter(False):
            mean_p = diffusion.ddim_mean(method.guided(xp, tr.t, cond, uncond), xp, a_t, a_prev, eta, ptype)
        (base_rev,) = torch.autograd.grad(diffusion.gaussian_log_prob(tr.x_prev, mean_p, std).sum(), xp)
        base_fwd = diffusion.forward_score(tr.x_prev, mean_p.detach(), std)
    else:
        base_fwd, base_rev = objectives.backward_scores(tr.x_t, tr.x_prev, a_t, a_prev)

    # ∇r at x_prev: through θ's one-step x̂_0 there, or at x_0 itself on the last transitions.
    y = tr.x_prev.detach().clone().requires_grad_(True)
    out_y = method.guided(y, tr.t_prev.clamp(min=0), cond, uncond)
    last = tr.is_last.view(-1, *[1] * (y.ndim - 1))
    x0_prev = torch.where(last, y, diffusion.predict_x0(out_y, y, a_prev, ptype))
    (grad_prev,) = torch.autograd.grad(reward(x0_prev).sum(), y)

    terms = objectives.BalanceTerms(
        score_fwd, score_rev, base_fwd, base_rev,
        method._flow(tr.x_prev, tr.t_prev, cond), method._flow(tr.x_t, tr.t, cond), grad_prev, grad_t,
        gamma_prev=a_prev, gamma_t=a_t, is_last=tr.is_last,
    )
    # The reference keeps reward_grad_t apart (no fusion); P_B's scores enter ∇-DB at κ = 1.
    kappa = o.pretrained_strength if method.name == "residual_nabla_db" else 1.0
    losses = objectives.residual_nabla_db_losses(
        terms, beta=o.reward_scale, kappa=kappa, std=std, weighting=o.weighting, reduction=o.reduction,
    )
    reg = objectives.output_regularizer(out, tr.model_output_old, o.reduction)
    return (losses.total(o.reverse_loss_weight) + o.output_reg * reg).mean()


def value_and_grads(trainer, compute):
    params = trainer.backend.lora_parameters() + list(trainer.method.flow.parameters())
    loss = compute()
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method", ["residual_nabla_db", "nabla_db"])
@pytest.mark.parametrize("reverse_trains_policy", [False, True])
def test_loss_and_gradients_match_the_full_batch_reference(toy_prior_dir, tmp_path, method, reverse_trains_policy):
    trainer = toy_trainer(toy_prior_dir, tmp_path, method, reverse_trains_policy=reverse_trains_policy)
    micro = micro_batch(trainer)
    got, got_grads = value_and_grads(trainer, lambda: trainer.method.loss(micro).loss)
    want, want_grads = value_and_grads(trainer, lambda: reference_loss(trainer.method, micro))
    assert want > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in got_grads[: len(trainer.backend.lora_parameters())])


def test_loss_matches_the_reference_on_the_sd_path_with_guidance(random_sd_dir, tmp_path):
    trainer = toy_trainer(random_sd_dir, tmp_path, sd=True, microbatch_size=64, transition_fraction=0.5)
    micro = micro_batch(trainer)
    got, want = trainer.method.loss(micro).loss, reference_loss(trainer.method, micro)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_residual_nabla_db_runs_the_fewest_denoiser_passes(toy_prior_dir, tmp_path):
    """Per trained transition (f = share with a reverse term): θ forward at x_t and at x_prev
    (inner only), θ backward for the loss, the reverse side and ∇r(x_prev); the prior forward
    once and backward only where a reverse term needs its score."""
    trainer = toy_trainer(toy_prior_dir, tmp_path)
    micro = micro_batch(trainer)
    f = (~micro.is_last).float().mean().item()
    counts = denoiser_passes(trainer)
    assert counts["forward_rows_theta_per_transition"] == pytest.approx(1 + f)
    assert counts["backward_rows_theta_per_transition"] == pytest.approx(1 + 2 * f)
    assert counts["forward_rows_prior_per_transition"] == pytest.approx(1)
    assert counts["backward_rows_prior_per_transition"] == pytest.approx(f)


def test_pass_counter_counts_rows_and_vjps(toy_prior_dir, tmp_path):
    backend = toy_trainer(toy_prior_dir, tmp_path).backend
    x = torch.randn(5, 2, requires_grad=True)
    t = torch.full((5,), 500)
    with count_denoiser_passes(backend) as counts:
        out = backend.model_output(x, t, None)
        torch.autograd.grad(out.sum(), x, retain_graph=True)
        out.square().sum().backward()
        with backend.adapter(False), torch.no_grad():
            backend.model_output(x[:2], t[:2], None)
    assert dict(counts) == {"forward_rows_theta": 5, "backward_rows_theta": 10, "forward_rows_prior": 2}
    assert "model_output" not in vars(backend)  # the method is restored
