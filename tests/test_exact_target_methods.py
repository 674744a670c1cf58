"""Adjoint Matching, Relative Trajectory Balance and DPOK: each loss against an independent computation.

* Adjoint Matching: on a linear-Gaussian step its optimum is the exactly tilted kernel (the tilt
  from ``nabla.data.toy2d``); the lean adjoint recursion equals autograd of −λ r(x_0) through a
  several-step chain of the (non-linear) toy prior, where the lean and the full adjoint coincide.
* RTB: on a linear-Gaussian chain the exactly tilted policy makes δ constant over trajectories
  when the start is independent of x_0, and not otherwise; the method's δ equals one recomputed
  from every step's densities.
* DPOK: the KL in the return gives the gradient of E[ρr] − α KL exactly (Monte Carlo against the
  closed form); the pieces against hand computations.
"""

import math

import pytest
import torch

from baselines.adjoint_matching import AdjointMatching, AdjointMatchingOptions, adjoint_matching_loss, lean_adjoints, time_indices
from baselines.dpok import clamped_policy_loss, returns_to_go
from baselines.rtb import RelativeTrajectoryBalance, RTBOptions, rtb_residual
from nabla import diffusion
from nabla.data.toy2d import GaussianMixture, tilt_linear
from nabla.methods import SamplerConfig
from nabla.models.toy2d import Toy2dBackend
from nabla.rewards import build_reward
from nabla.sampling import sampler_step, trajectory_noise

torch.set_num_threads(1)


def test_gaussian_kl_is_the_closed_form_of_two_equal_variance_gaussians():
    torch.manual_seed(0)
    mean, other, std = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0.3, 1.0, 2.0])
    expected = torch.stack([
        torch.distributions.kl_divergence(torch.distributions.Normal(mean[i], std[i]),
                                          torch.distributions.Normal(other[i], std[i])).sum()
        for i in range(3)
    ])
    torch.testing.assert_close(diffusion.gaussian_kl(mean, other, std), expected)
    torch.testing.assert_close(diffusion.gaussian_kl(mean, other, std, reduction="mean"), expected / 5)


# -- Adjoint Matching -------------------------------------------------------------------------------
def test_adjoint_matching_optimum_on_a_linear_gaussian_step_is_the_tilted_kernel():
    """One step x_0 ~ N(μ#, σ²I), r = w·x: the tilt N(μ#, σ²)·exp(λ w·x) is N(μ# + σ²λw, σ²)."""
    mu, sigma, lam, w = torch.tensor([[0.3, -1.2]], dtype=torch.float64), 0.7, 1.7, torch.tensor([0.5, 2.0], dtype=torch.float64)
    tilted = tilt_linear(GaussianMixture(mu, [sigma], [1.0]), w, lam)  # independent: completing the square
    adjoint = (-lam * w)[None]  # a^(T) = −λ∇r
    mean = tilted.means.clone().requires_grad_(True)
    loss = adjoint_matching_loss(mean, mu, sigma, adjoint)
    (grad,) = torch.autograd.grad(loss.sum(), mean)
    assert loss.item() == pytest.approx(0.0, abs=1e-24) and grad.abs().max() < 1e-12
    # the loss is a quadratic in μ_θ with curvature 2/σ² per dimension: its minimiser is unique
    assert adjoint_matching_loss(mu, mu, sigma, adjoint).item() == pytest.approx(sigma**2 * lam**2 * w.square().sum().item())


def method_on(prior_dir, cls, options, reward, num_steps):
    backend = Toy2dBackend.from_pretrained(prior_dir)
    backend.add_lora(4, seed=0)
    return cls(options, backend, reward, SamplerConfig(num_steps=num_steps, eta=1.0, guidance_scale=1.0))


def test_lean_adjoints_equal_autograd_of_the_reward_through_the_prior_chain(toy_prior_dir):
    """With θ = the prior, the lean adjoint is the full one: a^(j) = ∇_{x^(j)} (−λ r(x_0)) with the
    chain's noise held fixed, through every later step of the MLP prior (non-identity Jacobians)."""
    lam, steps, seeds = 0.8, 4, [11, 12, 13]
    reward = build_reward("quadratic", center=[0.0, 2.0])  # a non-constant gradient
    method = method_on(toy_prior_dir, AdjointMatching, AdjointMatchingOptions(reward_scale=lam), reward, steps)
    batch = method.collect([""] * 3, seeds)
    tr, adjoints = batch.trajectory, batch.extras["adjoints"]
    noise = trajectory_noise(seeds, steps, (2,), "cpu", torch.float32)
    pairs = list(zip(tr.timesteps.tolist(), tr.prev_timesteps.tolist()))
    for j in range(1, steps + 1):
        x = tr.latents[j].clone().requires_grad_(True)
        y = x
        for k in range(j, steps):  # transitions j … T−1 from x^(j), the rollout's own noise
            y = sampler_step(method.backend, y, *pairs[k], None, None, 1.0, 1.0, noise[k + 1]).x_prev
        torch.testing.assert_close(y.detach(), tr.latents[-1], atol=1e-5, rtol=0)  # the same chain
        (expected,) = torch.autograd.grad(-lam * reward(y, None).sum(), x)
        torch.testing.assert_close(adjoints[j - 1], expected, atol=1e-5, rtol=1e-4)
    # the Jacobians are not the identity: the adjoint changes along the chain
    assert (adjoints[0] - adjoints[-1]).abs().max() > 0.05


def test_lean_adjoints_apply_the_vjps_backwards_from_the_end():
    scale = [None, lambda v: 2 * v, lambda v: v + 1]  # a^(1) = vjp1(vjp2(a^(3)))
    torch.testing.assert_close(lean_adjoints(torch.tensor([1.0]), scale), torch.tensor([[4.0], [2.0], [1.0]]))


def test_time_indices_draw_early_and_late_steps_as_the_release():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = time_indices(50, 2, 2, 0.4, g)
        assert len(idx) == 4 and len(set(idx.tolist())) == 4
        assert (idx[:2] < 30).all() and (idx[2:] >= 30).all()
    assert time_indices(1, 2, 2, 0.4, g).tolist() == [0]


# -- Relative Trajectory Balance ----------------------------------------------------------------------
def linear_gaussian_rtb_deltas(start_gain: float, n: int = 2000, beta: float = 0.9):
    """δ of n trajectories of the exactly tilted policy on a 3-step linear-Gaussian chain
    x^(j+1) = A_j x^(j) + b_j + σ_j ε, x^(0) ~ N(0, I), r = w·x^(3); A_0 = start_gain · M; and the
    std of δ = −log Z(x^(0)) = −β w·A_2 A_1 A_0 x^(0) + const in closed form."""
    g = torch.Generator().manual_seed(0)
    d, w = 2, torch.tensor([1.0, -0.5], dtype=torch.float64)
    A = [start_gain * torch.randn(d, d, generator=g, dtype=torch.float64)] + \
        [torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(2)]
    b = [torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3)]
    sigma = [0.9, 0.5, 0.2]
    # ∇ log E[exp(βr) | x^(j+1)] = (A_{T−1} ⋯ A_{j+1})ᵀ β w: the tilt's shift of kernel j is σ_j² of it
    grads = [beta * w]
    for j in (2, 1):
        grads.insert(0, A[j].T @ grads[0])
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    log_ratio = torch.zeros(n, dtype=torch.float64)
    for j in range(3):
        prior_mean = x @ A[j].T + b[j]
        mean = prior_mean + sigma[j] ** 2 * grads[j]
        x_next = mean + sigma[j] * torch.randn(n, d, generator=g, dtype=torch.float64)
        log_ratio += diffusion.gaussian_log_prob(x_next, mean, sigma[j]) - diffusion.gaussian_log_prob(x_next, prior_mean, sigma[j])
        x = x_next
    deltas = rtb_residual(torch.zeros(n, dtype=torch.float64), log_ratio, x @ w, beta)
    return deltas, beta * (A[0].T @ A[1].T @ A[2].T @ w).norm()


def test_rtb_residual_is_constant_for_the_exact_tilt_when_the_start_is_independent_of_x0():
    (independent, _), (dependent, spread) = linear_gaussian_rtb_deltas(0.0), linear_gaussian_rtb_deltas(1.0)
    assert independent.std() < 1e-9  # δ ≡ −log Z: the RTB loss is 0 at the tilt (with log Z learned)
    # δ = −log Z(x_T): no log Z makes it vanish; its spread is the closed form's (MC error ~2 %)
    assert dependent.std().item() == pytest.approx(spread.item(), rel=0.08) and spread > 0.01


def test_rtb_delta_equals_one_recomputed_from_every_steps_densities(toy_prior_dir):
    beta, steps = 0.5, 5
    reward = build_reward("linear", w=[1.0, 0.0])
    method = method_on(toy_prior_dir, RelativeTrajectoryBalance,
                       RTBOptions(reward_scale=beta, transition_fraction=0.4, microbatch_size=3), reward, steps)
    with torch.no_grad():  # θ ≠ the prior, so every ℓ_t ≠ 0
        for p in method.backend.lora_parameters():
            p.add_(0.3 * torch.randn_like(p))
        method.log_z.bias.fill_(0.7)
    batch = method.collect([""] * 3, [1, 2, 3])
    micro = method.plan(batch, torch.Generator().manual_seed(0))[0][0]
    out = method.loss(micro)
    tr = batch.trajectory
    log_ratio = torch.zeros(3)
    for j, (t, t_prev) in enumerate(zip(tr.timesteps, tr.prev_timesteps)):
        a_t, a_prev = (a.float() for a in diffusion.alpha_bars(method.backend.scheduler, t, t_prev))
        std = diffusion.ddim_std(a_t, a_prev, 1.0)
        with torch.no_grad():
            densities = []
            for prior in (False, True):
                with method.backend.adapter(not prior):
                    out_j = method.backend.model_output(tr.latents[j], t)
                mean = diffusion.ddim_mean(out_j, tr.latents[j], a_t, a_prev, 1.0, "epsilon")
                densities.append(diffusion.gaussian_log_prob(tr.latents[j + 1], mean, std))
        log_ratio += densities[0] - densities[1]
    delta = 0.7 + log_ratio - beta * batch.rewards
    assert log_ratio.abs().min() > 0.01
    assert out.loss.item() == pytest.approx(delta.square().mean().item(), rel=1e-4)


# -- DPOK --------------------------------------------------------------------------------------------
def test_returns_to_go_subtract_the_later_log_ratios_over_beta():
    rewards, log_ratios = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0], [0.25, -1.0], [1.0, 2.0]])
    expected = torch.tensor([[1 - 1.75 / 2, 2 - 2.0 / 2], [1 - 1.25 / 2, 2 - 1.0 / 2], [1 - 1.0 / 2, 2 - 2.0 / 2]])
    torch.testing.assert_close(returns_to_go(rewards, log_ratios, 2.0), expected)
    torch.testing.assert_close(returns_to_go(rewards, log_ratios, None), rewards.expand(3, 2))


def test_the_clamped_ratio_passes_no_gradient_outside_the_range():
    log_prob = torch.tensor([0.0, 0.5, -0.5]).requires_grad_(True)
    loss = clamped_policy_loss(log_prob, torch.zeros(3), torch.tensor([2.0, 2.0, 2.0]), 0.1)
    loss.sum().backward()
    torch.testing.assert_close(loss.detach(), torch.tensor([-2.0, -2.2, -1.8]))
    torch.testing.assert_close(log_prob.grad, torch.tensor([-2.0, 0.0, 0.0]))


def test_the_kl_in_the_return_gives_the_exact_gradient_of_the_regularised_objective():
    """One step x ~ N(m, σ²), prior N(0, σ²), r = w x: ∇_m (ρ E[r] − α KL) = ρw − αm/σ², against
    the mean of the surrogate's gradients over many samples."""
    m0, sigma, w, rho, alpha, n = 0.4, 0.8, 1.5, 2.0, 3.0, 400_000
    x = m0 + sigma * torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.tensor(m0, dtype=torch.float64, requires_grad=True)
    log_prob = diffusion.gaussian_log_prob(x, m.expand(n, 1), sigma)
    log_ratio = (log_prob - diffusion.gaussian_log_prob(x, torch.zeros_like(x), sigma)).detach()
    returns = returns_to_go((w * x[:, 0])[None], log_ratio[None], rho / alpha)[0]
    per_sample = rho * clamped_policy_loss(log_prob, log_prob.detach(), returns, clip=1e9)
    (grads,) = torch.autograd.grad(per_sample.sum(), m, create_graph=False)
    estimate = -grads / n
    # the per-sample gradient's spread, for the Monte Carlo error
    score = (x[:, 0] - m0) / sigma**2
    spread = (rho * returns.detach() * score).std() / math.sqrt(n)
    exact = rho * w - alpha * m0 / sigma**2
    assert abs(estimate.item() - exact) < 5 * spread.item()
    assert abs(exact - rho * w) > 20 * spread.item()  # the KL's share is resolved


# -- what "exact" means here ---------------------------------------------------------------------------
def test_the_exactness_table_puts_the_starts_floor_beside_the_priors(toy_prior_dir, tmp_path):
    import json

    import pandas as pd
    import yaml

    from nabla.exactness import write_exactness

    config = yaml.safe_load(open("config/train/toy2d.yaml"))
    config["model"] = str(toy_prior_dir)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "prior.json").write_text(json.dumps({"reward": "linear", "energy_distance_prior": 0.01}))
    written = write_exactness(tmp_path / "toy.yaml", ["linear", "quadratic"], [tmp_path / "prior.json"],
                              tmp_path / "out" / "exactness.csv", num_samples=500)
    table = pd.read_csv(written[0]).set_index("reward")
    scheduler = Toy2dBackend.from_pretrained(toy_prior_dir).scheduler
    first = diffusion.timestep_pairs(scheduler, 50)[0][0]
    assert (table["first_timestep"] == first).all() and first == 981
    assert table["alpha_bar_start"].tolist() == pytest.approx([float(scheduler.alphas_cumprod[first])] * 2)
    # √ᾱ ≈ 0.03 at the start: a floor far below what 500 samples resolve, yet not 0
    assert (table["ed_start_tilted_to_target"] > 0).all() and (table["ed_start_tilted_to_target"] < 1e-4).all()
    assert (table["ed_resolution"] > table["ed_start_tilted_to_target"]).all()
    assert table.loc["linear", "ed_prior_sampler_to_prior"] == 0.01 and pd.isna(table.loc["quadratic", "ed_prior_sampler_to_prior"])
    assert "| linear" in written[1].read_text()


def test_each_methods_own_target_is_the_tilt_at_its_beta_or_none():
    from baselines.dpok import DPOKOptions
    from nabla.data.toy2d import circle_mixture
    from nabla.evaluation import own_target

    reward, prior = build_reward("linear", w=[1.0, 0.0]), circle_mixture()
    expected = tilt_linear(prior, [1.0, 0.0], 0.25)
    for method, options in [("dpok", DPOKOptions(reward_weight=1.0, kl_weight=4.0)),
                            ("rtb", RTBOptions(reward_scale=0.25)),
                            ("adjoint_matching", AdjointMatchingOptions(reward_scale=0.25))]:
        target = own_target(reward, prior, method, options, (2,))
        torch.testing.assert_close(target.means, expected.means)
        torch.testing.assert_close(target.weights, expected.weights)
    # the release's ε-space KL weighs the steps unlike any tilt: no exact target to score against
    assert own_target(reward, prior, "dpok", DPOKOptions(kl_form="epsilon"), (2,)) is None
