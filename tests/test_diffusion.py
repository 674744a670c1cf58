"""Tests for nabla.diffusion: DDIM(η) kernels checked against diffusers and autograd."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from nabla.diffusion import (
    alpha_bars,
    backward_log_prob,
    ddim_mean,
    ddim_std,
    forward_score,
    gaussian_log_prob,
    predict_epsilon,
    predict_x0,
    reverse_score,
    timestep_pairs,
)

torch.set_num_threads(1)

PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]
STEPS = 10  # few inference steps: large gaps between t and t_prev


def make_scheduler(prediction_type="epsilon", set_alpha_to_one=False, float64=False):
    # Stable Diffusion's configuration.
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        set_alpha_to_one=set_alpha_to_one,
        clip_sample=False,
        prediction_type=prediction_type,
    )
    if float64:
        # Same ᾱ values, but step() then does its arithmetic in float64: stock
        # diffusers rounds 1 − ᾱ_t/ᾱ_prev in float32, off by ~1e-5 on the last step.
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    return sched


def ab(sched, t, t_prev):
    a_t, a_prev = alpha_bars(sched, torch.tensor(t), torch.tensor(t_prev))
    return a_t, a_prev


def tiny_mlp(dim, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, dim)
    ).double()


# --------------------------------------------------------------------------- #
# Schedule
# --------------------------------------------------------------------------- #
def test_timestep_pairs_sd_schedule():
    sched = make_scheduler()
    pairs = timestep_pairs(sched, 50)
    assert len(pairs) == 50
    assert pairs[0] == (981, 961)
    # "leading" spacing + steps_offset=1: last t is 1, and DDIM's t_prev = t − 1000//50.
    assert pairs[-1] == (1, -19)
    # Consecutive steps chain, and step() uses exactly these t_prev.
    assert all(p[1] == q[0] for p, q in zip(pairs, pairs[1:]))
    assert [p[0] for p in pairs] == sched.timesteps.tolist()


def test_alpha_bars_vectorised_and_final():
    sched = make_scheduler()
    pairs = timestep_pairs(sched, STEPS)
    t = torch.tensor([p[0] for p in pairs])
    tp = torch.tensor([p[1] for p in pairs])
    a_t, a_prev = alpha_bars(sched, t, tp)
    assert a_t.shape == t.shape and a_prev.shape == t.shape and a_t.dtype == torch.float64
    assert torch.equal(a_t, sched.alphas_cumprod[t].double())
    assert torch.equal(a_prev[:-1], sched.alphas_cumprod[tp[:-1]].double())
    assert a_prev[-1] == sched.final_alpha_cumprod.double() == sched.alphas_cumprod[0].double()
    assert a_prev[-1] < 1


# --------------------------------------------------------------------------- #
# P_F against DDIMScheduler.step
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("where", ["middle", "last"])
def test_ddim_step_matches_diffusers(prediction_type, eta, where):
    sched = make_scheduler(prediction_type, float64=True)
    pairs = timestep_pairs(sched, STEPS)
    t, t_prev = pairs[STEPS // 2] if where == "middle" else pairs[-1]
    assert (t_prev < 0) == (where == "last")
    g = torch.Generator().manual_seed(PREDICTION_TYPES.index(prediction_type) + int(10 * eta) + 100 * (where == "last"))
    x_t = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)
    out = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)

    expected = sched.step(out, t, x_t, eta=eta, variance_noise=noise).prev_sample
    a_t, a_prev = ab(sched, t, t_prev)
    std = ddim_std(a_t, a_prev, eta)
    got = ddim_mean(out, x_t, a_t, a_prev, eta, prediction_type) + std * noise
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(got).all()
    # x̂_0 also matches what step() reports.
    x0 = predict_x0(out, x_t, a_t, prediction_type)
    torch.testing.assert_close(
        x0, sched.step(out, t, x_t, eta=eta, variance_noise=noise).pred_original_sample, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_step_per_sample_alpha_bars(prediction_type):
    # Each sample of the batch at its own step: (B,) ᾱ broadcast against (B, ...).
    sched = make_scheduler(prediction_type, float64=True)
    pairs = timestep_pairs(sched, STEPS)
    chosen = [pairs[1], pairs[-1], pairs[4]]
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    out = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    a_t, a_prev = alpha_bars(sched, torch.tensor([p[0] for p in chosen]), torch.tensor([p[1] for p in chosen]))
    std = ddim_std(a_t, a_prev, 1.0)
    got = ddim_mean(out, x_t, a_t, a_prev, 1.0, prediction_type) + std.view(-1, 1, 1) * noise
    expected = torch.stack(
        [sched.step(out[i], p[0], x_t[i], eta=1.0, variance_noise=noise[i]).prev_sample for i, p in enumerate(chosen)]
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("step", [3, -1])
def test_ddim_step_float32_stock_scheduler(prediction_type, step):
    # Stock (float32) scheduler and float32 tensors: agreement to float32 rounding.
    sched = make_scheduler(prediction_type)
    t, t_prev = timestep_pairs(sched, STEPS)[step]
    g = torch.Generator().manual_seed(2)
    x_t, out, noise = (torch.randn(2, 3, generator=g) for _ in range(3))
    a_t, a_prev = ab(sched, t, t_prev)
    got = ddim_mean(out, x_t, a_t, a_prev, 1.0, prediction_type) + ddim_std(a_t, a_prev, 1.0).float() * noise
    assert got.dtype == torch.float32
    expected = sched.step(out, t, x_t, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=5e-5)


def test_predict_epsilon_consistent_with_x0():
    # x_t = √ᾱ x̂_0 + √(1−ᾱ) ε̂ holds for every parameterisation.
    g = torch.Generator().manual_seed(3)
    x_t, out = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    a = 0.3
    for p in PREDICTION_TYPES:
        x0, eps = predict_x0(out, x_t, a, p), predict_epsilon(out, x_t, a, p)
        torch.testing.assert_close(math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, x_t)
    with pytest.raises(ValueError):
        predict_x0(out, x_t, a, "velocity")


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_std_matches_scheduler_variance(eta):
    sched = make_scheduler(float64=True)
    for t, t_prev in timestep_pairs(sched, STEPS):
        a_t, a_prev = ab(sched, t, t_prev)
        expected = sched._get_variance(t, t_prev).double() ** 0.5 * eta
        torch.testing.assert_close(ddim_std(a_t, a_prev, eta), expected, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- #
# Log-densities
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("std_kind", ["float", "0d", "per_sample"])
def test_gaussian_log_prob_matches_normal(std_kind):
    g = torch.Generator().manual_seed(4)
    x, mean = torch.randn(3, 2, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    std = {"float": 0.7, "0d": torch.tensor(0.7), "per_sample": torch.tensor([0.3, 0.7, 1.9])}[std_kind]
    s = torch.as_tensor(std, dtype=torch.float64)
    s = s.view(-1, 1, 1) if s.dim() else s
    ref = torch.distributions.Normal(mean, s.expand_as(mean)).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), ref.sum(dim=(1, 2)))
    torch.testing.assert_close(gaussian_log_prob(x, mean, std, reduction="mean"), ref.mean(dim=(1, 2)))
    assert gaussian_log_prob(x, mean, std).shape == (3,)


def test_backward_log_prob_matches_normal():
    sched = make_scheduler()
    g = torch.Generator().manual_seed(5)
    for t, t_prev in timestep_pairs(sched, STEPS)[::3] + [timestep_pairs(sched, STEPS)[-1]]:
        x_prev = torch.randn(2, 4, generator=g, dtype=torch.float64)
        x_t = torch.randn(2, 4, generator=g, dtype=torch.float64)
        at = sched.alphas_cumprod[t].double()
        ap = (sched.alphas_cumprod[t_prev] if t_prev >= 0 else sched.final_alpha_cumprod).double()
        alpha = at / ap  # the noising from t_prev to t: x_t = √α x_prev + √(1−α) ε
        ref = torch.distributions.Normal(alpha.sqrt() * x_prev, (1 - alpha).sqrt()).log_prob(x_t)
        a_t, a_prev = ab(sched, t, t_prev)
        torch.testing.assert_close(backward_log_prob(x_t, x_prev, a_t, a_prev), ref.sum(1))
        torch.testing.assert_close(backward_log_prob(x_t, x_prev, a_t, a_prev, reduction="mean"), ref.mean(1))


# --------------------------------------------------------------------------- #
# Scores
# --------------------------------------------------------------------------- #
def central_fd(f, x, h=1e-6):
    """Central finite-difference gradient of a scalar f at x (float64)."""
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


def test_forward_score_autograd_and_fd():
    g = torch.Generator().manual_seed(6)
    x_prev, mu = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    std = torch.tensor([0.4, 1.3], dtype=torch.float64)
    score = forward_score(x_prev, mu, std)
    x = x_prev.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gaussian_log_prob(x, mu, std).sum(), x)
    torch.testing.assert_close(score, auto)
    fd = central_fd(lambda z: gaussian_log_prob(z, mu, std).sum(), x_prev)
    torch.testing.assert_close(score, fd, rtol=1e-6, atol=1e-6)


def _pf_setup(dim, prediction_type="epsilon", step=STEPS // 2, eta=1.0, seed=7):
    sched = make_scheduler(prediction_type)
    t, t_prev = timestep_pairs(sched, STEPS)[step]
    a_t, a_prev = ab(sched, t, t_prev)
    std = ddim_std(a_t, a_prev, eta)
    mlp = tiny_mlp(dim, seed)
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        mean_fn = lambda x: ddim_mean(mlp(x), x, a_t, a_prev, eta, prediction_type)  # noqa: E731
        x_prev = mean_fn(x_t) + std * torch.randn(2, dim, generator=g, dtype=torch.float64)
    return mlp, mean_fn, x_t, x_prev, std


def reverse_score_through(x_t, x_prev, mean_fn, std, create_graph=False):
    """``reverse_score`` at a fresh leaf copy of x_t, with μ = mean_fn(x_t) built from it."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        return reverse_score(x, x_prev, mean_fn(x), std, create_graph=create_graph)


@pytest.mark.parametrize("dim", [2, 4])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_reverse_score_autograd_and_fd(dim, prediction_type):
    mlp, mean_fn, x_t, x_prev, std = _pf_setup(dim, prediction_type)
    log_pf = lambda z: gaussian_log_prob(x_prev, mean_fn(z), std)  # noqa: E731
    score = reverse_score_through(x_t, x_prev, mean_fn, std)
    assert score.shape == x_t.shape and score.grad_fn is None
    assert all(p.grad is None for p in mlp.parameters())
    x = x_t.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(log_pf(x).sum(), x)
    torch.testing.assert_close(score, auto)
    # Samples are independent, so the gradient of the batch sum is per-sample.
    with torch.no_grad():
        fd = central_fd(lambda z: log_pf(z).sum(), x_t)
    torch.testing.assert_close(score, fd, rtol=1e-5, atol=1e-5)


def test_reverse_score_last_step_finite():
    _, mean_fn, x_t, x_prev, std = _pf_setup(2, step=-1)
    assert 0 < float(std) < 0.1
    score = reverse_score_through(x_t, x_prev, mean_fn, std)
    assert torch.isfinite(score).all()
    x = x_t.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gaussian_log_prob(x_prev, mean_fn(x), std).sum(), x)
    torch.testing.assert_close(score, auto)


def test_reverse_score_create_graph_reaches_parameters():
    mlp, mean_fn, x_t, x_prev, std = _pf_setup(2)
    w = torch.tensor([[0.3, -1.1], [0.7, 0.2]], dtype=torch.float64)
    objective = lambda: (reverse_score_through(x_t, x_prev, mean_fn, std, create_graph=True) * w).sum()  # noqa: E731
    value = objective()
    assert value.grad_fn is not None
    param = mlp[0].weight
    (grad,) = torch.autograd.grad(value, param)
    assert grad.abs().sum() > 0
    # Finite difference on one weight entry: covers the dependence through both
    # the Jacobian and (x_prev − μ)/σ².
    h = 1e-6
    with torch.no_grad():
        param[0, 1] += h
        up = objective().item()
        param[0, 1] -= 2 * h
        down = objective().item()
        param[0, 1] += h
    assert math.isclose(grad[0, 1].item(), (up - down) / (2 * h), rel_tol=1e-5, abs_tol=1e-6)


# --------------------------------------------------------------------------- #
# Degenerate transitions
# --------------------------------------------------------------------------- #
def test_eta_zero_is_deterministic():
    sched = make_scheduler()
    for t, t_prev in timestep_pairs(sched, STEPS)[-2:]:
        a_t, a_prev = ab(sched, t, t_prev)
        std = ddim_std(a_t, a_prev, 0.0)
        assert std == 0
        x_t, out = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
        mu = ddim_mean(out, x_t, a_t, a_prev, 0.0, "epsilon")
        assert torch.isfinite(mu).all()
        with pytest.raises(ValueError, match="deterministic"):
            gaussian_log_prob(mu, mu, std)
        with pytest.raises(ValueError, match="deterministic"):
            forward_score(mu, mu, std)
        with pytest.raises(ValueError, match="deterministic"):
            reverse_score_through(x_t, mu, lambda x: x, std)


def test_last_step_eta_one_finite():
    sched = make_scheduler("v_prediction")
    t, t_prev = timestep_pairs(sched, STEPS)[-1]
    a_t, a_prev = ab(sched, t, t_prev)
    std = ddim_std(a_t, a_prev, 1.0)
    assert torch.isfinite(std) and std > 0
    x_t, out = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mu = ddim_mean(out, x_t, a_t, a_prev, 1.0, "v_prediction")
    x_prev = mu + std * torch.randn(2, 3, dtype=torch.float64)
    for value in (mu, gaussian_log_prob(x_prev, mu, std), backward_log_prob(x_t, x_prev, a_t, a_prev)):
        assert torch.isfinite(value).all()


def test_set_alpha_to_one_last_step():
    sched = make_scheduler("epsilon", set_alpha_to_one=True)
    t, t_prev = timestep_pairs(sched, STEPS)[-1]
    a_t, a_prev = ab(sched, t, t_prev)
    assert a_prev == 1
    std = ddim_std(a_t, a_prev, 1.0)
    assert std == 0 and not torch.isnan(std)
    x_t, out = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mu = ddim_mean(out, x_t, a_t, a_prev, 1.0, "epsilon")
    # ᾱ_prev = 1: the step lands on x̂_0, as diffusers does.
    torch.testing.assert_close(mu, predict_x0(out, x_t, a_t, "epsilon"))
    torch.testing.assert_close(mu, sched.step(out, t, x_t, eta=1.0, variance_noise=torch.zeros_like(x_t)).prev_sample)
    with pytest.raises(ValueError, match="deterministic"):
        gaussian_log_prob(mu, mu, std)


def test_python_float_coefficients_keep_float64_precision():
    """A Python float goes to float64 directly (through float32 it would lose 29 bits: 0.9 → 0.8999999762)."""
    a_t, a_prev = 0.9, 0.95
    expected = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    assert ddim_std(a_t, a_prev, 1.0).item() == pytest.approx(expected, rel=1e-14)
