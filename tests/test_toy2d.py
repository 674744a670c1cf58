"""The 2-D toy: exact mixture maths, its reward tilts, the metrics, and the MLP backend.

Each closed form is checked against something computed another way: grid integration,
autograd, empirical noising, importance-reweighted prior samples, a hand-written density.
"""

import copy
import math

import pytest
import torch

from nabla.data.toy2d import (
    GaussianMixture,
    LinearReward,
    QuadraticReward,
    circle_mixture,
    reward_only_target,
    start_tilted,
    tilt,
    tilt_linear,
)
from nabla.metrics.toy2d import (
    MixtureReference,
    component_masses,
    energy_distance,
    mass_tv,
    mixture_energy_distance,
)
from nabla.metrics.toy2d import _mean_pair_distance
from nabla.models.toy2d import (
    MLPConfig,
    MLPDenoiser,
    Toy2dBackend,
    load_toy2d,
    pretrain_toy2d,
    save_toy2d,
    toy2d_scheduler,
)

torch.set_num_threads(1)

PRIOR = circle_mixture()
LINEAR = LinearReward([1.0, 0.0])
QUADRATIC = QuadraticReward([2.0, 1.0])
# component 0 at angle 0, counter-clockwise; from an independent computation of π_k e^{β w·μ_k}
LINEAR_TILT_WEIGHTS = [0.239, 0.366, 0.024, 0.014, 0.005, 0.012, 0.040, 0.299]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ddim_sample(backend, n, steps, eta, generator):
    """A plain DDIM loop with diffusers' step (the toy's own test sampler)."""
    scheduler = backend.scheduler
    scheduler.set_timesteps(steps)
    x = torch.randn(n, *backend.sample_shape, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = backend.model_output(x, t, None)
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x


def weighted_component_stats(x, component, log_w, k):
    """Self-normalised importance estimates of component masses and means: (K,), (K, 2)."""
    w = torch.softmax(log_w, dim=0)
    onehot = torch.nn.functional.one_hot(component, k).to(w.dtype)  # (N, K)
    masses = w @ onehot
    means = (onehot * w[:, None]).T @ x / masses[:, None]
    return masses, means


# -- the mixture ------------------------------------------------------------------------------
def test_circle_mixture_layout():
    assert PRIOR.means.dtype == torch.float64 and PRIOR.num_components == 8
    torch.testing.assert_close(PRIOR.means[0], torch.tensor([4.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(PRIOR.means[2], torch.tensor([0.0, 4.0], dtype=torch.float64))
    assert math.isclose(float(PRIOR.weights.sum()), 1.0)


def test_sampling_matches_weights_and_means():
    n = 200_000
    x, component = PRIOR.sample(n, gen(0))
    freq = torch.bincount(component, minlength=8).double() / n
    tol = 5 * torch.sqrt(PRIOR.weights * (1 - PRIOR.weights) / n)
    assert ((freq - PRIOR.weights).abs() < tol).all()
    for k in range(8):
        xk = x[component == k]
        assert torch.allclose(xk.mean(0), PRIOR.means[k], atol=5 * 0.5 / math.sqrt(len(xk)))
        assert torch.allclose(xk.std(0), PRIOR.stds[k].expand(2), rtol=0.03)


def test_log_prob_normalises_on_a_grid():
    step = 0.05
    axis = torch.arange(-7.0, 7.0, step, dtype=torch.float64) + step / 2
    grid = torch.cartesian_prod(axis, axis)
    mass = PRIOR.log_prob(grid).exp().sum() * step**2
    assert abs(float(mass) - 1.0) < 1e-4


def test_log_prob_matches_hand_computation():
    mix = GaussianMixture([[0.0, 0.0], [1.0, 2.0]], [1.0, 0.5], [0.25, 0.75])
    x = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    # N(x; μ, σ² I) in 2-D = exp(−|x−μ|²/(2σ²)) / (2πσ²)
    p0 = math.exp(-(0.25 + 1.0) / 2) / (2 * math.pi)
    p1 = math.exp(-(0.25 + 1.0) / (2 * 0.25)) / (2 * math.pi * 0.25)
    expected = math.log(0.25 * p0 + 0.75 * p1)
    assert math.isclose(float(mix.log_prob(x)[0]), expected, rel_tol=1e-12)
    resp = mix.responsibilities(x)[0]
    assert math.isclose(float(resp[1]), 0.75 * p1 / (0.25 * p0 + 0.75 * p1), rel_tol=1e-12)


def test_score_is_gradient_of_log_prob():
    x = PRIOR.sample(500, gen(1))[0] * 1.3  # also probe between and outside the modes
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(PRIOR.log_prob(x).sum(), x)
    torch.testing.assert_close(PRIOR.score(x.detach()), grad, rtol=1e-10, atol=1e-10)
    assert PRIOR.score(x.detach().float()).dtype == torch.float32


def test_noised_mixture_matches_empirical_noising():
    alpha_bar = 0.3
    n = 4000
    x0 = PRIOR.sample(n, gen(2))[0]
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * torch.randn(
        n, 2, generator=gen(3), dtype=torch.float64
    )
    noised = PRIOR.noised(alpha_bar)
    assert energy_distance(x_t, noised.sample(n, gen(4))[0]) < 0.01
    # the analytic variance: ᾱσ² + 1 − ᾱ, and the average log-likelihood is the highest there
    torch.testing.assert_close(noised.stds, torch.full((8,), math.sqrt(0.3 * 0.25 + 0.7)).double())
    ll = noised.log_prob(x_t).mean()
    assert ll > PRIOR.noised(0.5).log_prob(x_t).mean()
    assert ll > PRIOR.noised(0.1).log_prob(x_t).mean()
    # the ends: ᾱ = 1 is the data, ᾱ = 0 is N(0, I)
    torch.testing.assert_close(PRIOR.noised(1.0).means, PRIOR.means)
    torch.testing.assert_close(PRIOR.noised(0.0).stds, torch.ones(8, dtype=torch.float64))


# -- tilts ------------------------------------------------------------------------------------
def assert_log_ratio_is_reward(target, prior, reward, beta, x):
    """log p_target − log p_prior − β r must be one constant (log Z) everywhere."""
    gap = target.log_prob(x) - prior.log_prob(x) - beta * reward(x)
    assert float(gap.max() - gap.min()) < 1e-9


def test_linear_tilt_matches_reference_numbers():
    target = tilt(PRIOR, LINEAR, beta=0.5)
    assert torch.allclose(target.weights, torch.tensor(LINEAR_TILT_WEIGHTS).double(), atol=6e-4)
    shift = torch.tensor([0.5 * 0.25, 0.0], dtype=torch.float64)  # β σ² w
    torch.testing.assert_close(target.means, PRIOR.means + shift)
    torch.testing.assert_close(target.stds, PRIOR.stds)
    x = torch.randn(300, 2, generator=gen(5), dtype=torch.float64) * 4
    assert_log_ratio_is_reward(target, PRIOR, LINEAR, 0.5, x)


@pytest.mark.parametrize("reward,beta", [(LINEAR, 0.5), (QUADRATIC, 1.0), (QUADRATIC, 0.2)])
def test_tilt_matches_importance_reweighted_prior(reward, beta):
    x, component = PRIOR.sample(400_000, gen(6))
    masses, means = weighted_component_stats(x, component, beta * reward(x), 8)
    target = tilt(PRIOR, reward, beta)
    assert torch.allclose(masses, target.weights, atol=0.01)
    heavy = target.weights > 0.05  # components with enough effective samples to compare means
    assert torch.allclose(means[heavy], target.means[heavy], atol=0.03)
    probe = torch.randn(300, 2, generator=gen(7), dtype=torch.float64) * 4
    assert_log_ratio_is_reward(target, PRIOR, reward, beta, probe)


def test_quadratic_tilt_parameters():
    beta = 1.0
    target = tilt(PRIOR, QUADRATIC, beta)
    precision = 1 / 0.25 + beta
    torch.testing.assert_close(target.stds, torch.full((8,), precision**-0.5).double())
    c = QUADRATIC.center
    torch.testing.assert_close(target.means, (PRIOR.means / 0.25 + beta * c) / precision)


def test_reward_only_target():
    beta = 2.0
    target = reward_only_target(QUADRATIC, beta)
    assert target.num_components == 1
    torch.testing.assert_close(target.means[0], QUADRATIC.center)
    assert math.isclose(float(target.stds[0]), 1 / math.sqrt(beta))
    # exp(β r) normalised: log p = β r + log(β / 2π) in 2-D
    x = torch.randn(50, 2, generator=gen(8), dtype=torch.float64)
    log_z = math.log(beta / (2 * math.pi))
    torch.testing.assert_close(target.log_prob(x), beta * QUADRATIC(x) + log_z)
    with pytest.raises(ValueError):
        reward_only_target(LINEAR, beta)


def test_only_pretrained_strength_one_is_supported():
    with pytest.raises(NotImplementedError):
        tilt(PRIOR, LINEAR, 0.5, pretrained_strength=0.5)


# -- metrics ----------------------------------------------------------------------------------
def test_energy_distance_same_distribution_is_near_zero():
    x, y = PRIOR.sample(3000, gen(9))[0], PRIOR.sample(3000, gen(10))[0]
    assert abs(energy_distance(x, y)) < 0.01
    assert mixture_energy_distance(PRIOR, PRIOR) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_prior_to_linear_target():
    # An earlier experiment's sample estimate was ≈ 1.29 with this definition; the closed form
    # is 1.337, and 5k-vs-5k estimates spread with sd ≈ 0.05 (mode-weight noise), so 1.29 agrees.
    target = tilt(PRIOR, LINEAR, 0.5)
    exact = mixture_energy_distance(PRIOR, target)
    assert exact == pytest.approx(1.337, abs=2e-3)
    x, y = PRIOR.sample(5000, gen(11))[0], target.sample(5000, gen(12))[0]
    assert energy_distance(x, y) == pytest.approx(exact, abs=0.15)  # 3 sd
    # the mode-mass view of the same gap: ½ Σ |π_k − w_k| ≈ 0.42
    assert mass_tv(x, PRIOR, target.weights) == pytest.approx(0.4245, abs=0.02)


def test_mean_pair_distance_closed_form_matches_paired_samples():
    # E|X − Y| by independent pairs is O(N), so it checks the Rice-mean formula far more sharply
    # than a set-vs-set energy distance, whose mode-weight noise is ≈ 0.05 at 5k points
    target = tilt(PRIOR, QUADRATIC, 0.5)
    g = gen(13)
    for p, q in [(PRIOR, target), (PRIOR, PRIOR), (target, target)]:
        x, y = p.sample(400_000, g)[0], q.sample(400_000, g)[0]
        assert float(_mean_pair_distance(p, q)) == pytest.approx(
            float((x - y).norm(dim=-1).mean()), rel=3e-3
        )


def test_component_masses_recover_weights():
    x = PRIOR.sample(20_000, gen(15))[0]
    masses = component_masses(x, PRIOR)
    assert math.isclose(float(masses.sum()), 1.0)
    assert torch.allclose(masses, PRIOR.weights, atol=0.015)
    assert mass_tv(x, PRIOR, PRIOR.weights) < 0.02


# -- backend ----------------------------------------------------------------------------------
def fresh_backend(seed: int = 0) -> Toy2dBackend:
    torch.manual_seed(seed)
    return Toy2dBackend(MLPDenoiser(), toy2d_scheduler(), PRIOR)


def probe_inputs():
    g = gen(16)
    return torch.randn(64, 2, generator=g) * 3, torch.randint(0, 1000, (64,), generator=g)


def test_denoiser_shapes_and_unconditional_interface():
    backend = fresh_backend()
    x, t = probe_inputs()
    assert backend.model_output(x, t, None).shape == (64, 2)
    assert backend.sample_shape == (2,) and backend.decode(x) is x
    assert backend.encode_prompts(["a", "b"]) is None and backend.null_condition(2) is None
    # a scalar timestep broadcasts; guidance without an unconditional branch is one plain call
    torch.testing.assert_close(
        backend.model_output(x, t[0], None), backend.model_output(x, t[:1].expand(64), None)
    )
    torch.testing.assert_close(
        backend.guided_output(x, t, None, None, 5.0), backend.model_output(x, t, None)
    )
    linears = [m for m in backend.model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 and linears[0].in_features == 2 + 64


def test_lora_starts_at_prior_and_toggles():
    backend = fresh_backend()
    prior = copy.deepcopy(backend.model)
    x, t = probe_inputs()
    with torch.no_grad():
        reference = prior(x, t)
    backend.add_lora(rank=4)
    assert backend.adapter_enabled
    # B = 0 at init: θ equals the prior
    torch.testing.assert_close(backend.model_output(x, t, None), reference)
    lora = backend.lora_parameters()
    assert len(lora) == 8 and all(p.requires_grad for p in lora)
    base = [p for n, p in backend.model.named_parameters() if "lora_" not in n]
    assert len(base) == 8 and not any(p.requires_grad for p in base)

    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    on = backend.model_output(x, t, None)
    assert not torch.allclose(on, reference, atol=1e-4)
    with backend.adapter(False):
        assert not backend.adapter_enabled
        torch.testing.assert_close(backend.model_output(x, t, None), reference)
        # a prior evaluation does not change what trains
        assert all(p.requires_grad for p in lora)
    assert backend.adapter_enabled
    torch.testing.assert_close(backend.model_output(x, t, None), on)

    # gradients reach the adapter only
    backend.model_output(x, t, None).square().sum().backward()
    assert all(p.grad is not None for p in lora) and all(p.grad is None for p in base)


def test_lora_save_load_round_trip(tmp_path):
    backend = fresh_backend()
    backend.add_lora(rank=3, alpha=6.0, seed=1)
    with torch.no_grad():
        for p in backend.lora_parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = backend.save_lora(tmp_path / "lora")
    assert path.name == "adapter_model.safetensors" and path.exists()
    assert (tmp_path / "lora" / "adapter_config.json").exists()

    restored = fresh_backend()  # same seed: same base weights, no adapter yet
    restored.load_lora(tmp_path / "lora")
    for a, b in zip(backend.lora_parameters(), restored.lora_parameters()):
        assert torch.equal(a, b)
    x, t = probe_inputs()
    assert torch.equal(backend.model_output(x, t, None), restored.model_output(x, t, None))
    with pytest.raises(ValueError):  # a different rank is refused, not silently reshaped
        other = fresh_backend()
        other.add_lora(rank=2)
        other.load_lora(tmp_path / "lora")


def test_checkpoint_round_trip(tmp_path):
    model = MLPDenoiser(MLPConfig(hidden=32, depth=2))
    save_toy2d(model, PRIOR, tmp_path)
    loaded, mixture, scheduler = load_toy2d(tmp_path)
    x, t = probe_inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t), loaded(x, t))
    assert loaded.config == model.config
    for field in ("means", "stds", "weights"):
        assert torch.equal(getattr(mixture, field), getattr(PRIOR, field))
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    torch.testing.assert_close(scheduler.alphas_cumprod, toy2d_scheduler().alphas_cumprod)
    backend = Toy2dBackend.from_pretrained(tmp_path)
    assert torch.equal(backend.model_output(x, t, None), model(x, t).detach())


# -- sampling ---------------------------------------------------------------------------------
class _ExactEpsilon(torch.nn.Module):
    """ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t) from the noised mixture: the ideal denoiser."""

    config = MLPConfig()

    def __init__(self, mixture, scheduler):
        super().__init__()
        self.mixture, self.alphas_cumprod = mixture, scheduler.alphas_cumprod

    def forward(self, x, t):
        a = float(self.alphas_cumprod[int(t.reshape(-1)[0])])
        return -math.sqrt(1 - a) * self.mixture.noised(a).score(x)


def test_ddim_with_exact_epsilon_reaches_the_mixture():
    # checks the sampling loop and noised() together, and bounds the 50-step discretisation floor
    scheduler = toy2d_scheduler()
    backend = Toy2dBackend(_ExactEpsilon(PRIOR, scheduler), scheduler)
    x = ddim_sample(backend, 3000, 50, 1.0, gen(17))
    assert energy_distance(x, PRIOR.sample(3000, gen(18))[0]) < 0.01


@pytest.mark.slow
def test_short_pretraining_reaches_the_mixture():
    model, losses = pretrain_toy2d(PRIOR, steps=1500, batch_size=512, lr=2e-3, seed=0)
    assert len(losses) == 1500 and sum(losses[-100:]) < sum(losses[:100])
    backend = Toy2dBackend(model, toy2d_scheduler(), PRIOR)
    x = ddim_sample(backend, 3000, 50, 1.0, gen(19))
    assert energy_distance(x, PRIOR.sample(3000, gen(20))[0]) < 0.03


# -- the start's floor (nabla.exactness) --------------------------------------------------------------
def test_posterior_is_bayes_rule_of_the_mixture_and_the_noising_kernel():
    mixture, a = circle_mixture(), 0.3
    x_t = torch.tensor([1.0, -2.0], dtype=torch.float64)
    posterior = mixture.posterior(x_t, a)
    x0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    likelihood = -0.5 * (x_t - math.sqrt(a) * x0).square().sum(1) / (1 - a)
    difference = posterior.log_prob(x0) - (mixture.log_prob(x0) + likelihood)
    assert difference.std() < 1e-10  # equal up to the normaliser


def test_the_start_tilted_law_is_its_monte_carlo_and_the_target_when_the_start_carries_nothing():
    mixture, reward, beta = circle_mixture(), LinearReward([1.0, 0.0]), 0.5
    target = tilt_linear(mixture, [1.0, 0.0], beta)
    a = 0.05  # a start that carries visible information about x_0
    law = start_tilted(mixture, reward, beta, a)
    g = torch.Generator().manual_seed(1)
    starts = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    samples = torch.cat([tilt_linear(mixture.posterior(x, a), [1.0, 0.0], beta).sample(1, g)[0] for x in starts])
    to_law, to_target = MixtureReference(law).energy_distances(samples, MixtureReference(target))
    gap = mixture_energy_distance(law, target)
    assert abs(to_law) < 2e-3 and gap > 0.015 and to_target == pytest.approx(gap, abs=3e-3)
    assert mixture_energy_distance(start_tilted(mixture, reward, beta, 1e-9), target) < 1e-9
