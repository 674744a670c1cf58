"""Tests for nabla.objectives: hand-computed values, autograd of log P_B, and ∇-DB residuals
checked against autograd of the scalar detailed-balance condition in a closed-form Gaussian case."""

import math

import pytest
import torch

from nabla.diffusion import backward_log_prob, gaussian_log_prob
from nabla.objectives import (
    BalanceTerms,
    backward_scores,
    flow_score,
    gamma_schedule,
    nabla_db_forward,
    nabla_db_losses,
    nabla_db_reverse,
    output_regularizer,
    residual_forward,
    residual_nabla_db_losses,
    residual_reverse,
    squared_norm,
    terminal_flow_loss,
)

torch.set_num_threads(1)

T = lambda *rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731


# --------------------------------------------------------------------------- #
# Small functions, hand-computed
# --------------------------------------------------------------------------- #
def test_gamma_schedule_values():
    a = torch.tensor([0.25, 1.0, 0.0], dtype=torch.float64)
    assert torch.equal(gamma_schedule(a, "squared"), a)
    assert torch.allclose(gamma_schedule(a, "sqrt"), T(0.5, 1.0, 0.0))
    assert gamma_schedule(0.81).item() == pytest.approx(0.81)  # "squared" is the default
    assert gamma_schedule(0.81, "sqrt").item() == pytest.approx(0.9)
    with pytest.raises(ValueError):
        gamma_schedule(a, "linear")


def test_flow_score_hand_values():
    g, grad_r = T([1.0, 2.0], [0.0, -1.0]), T([3.0, 4.0], [2.0, 2.0])
    # γ β ∇r + g with a scalar γ, then a per-sample one.
    assert torch.allclose(flow_score(g, grad_r, 0.5, 2.0), T([4.0, 6.0], [2.0, 1.0]))
    assert torch.allclose(flow_score(g, grad_r, torch.tensor([1.0, 0.25]), 2.0), T([7.0, 10.0], [1.0, 0.0]))


def test_backward_scores_hand_values():
    # ᾱ_t = 0.5, ᾱ_prev = 1: ρ = 0.5, mean √0.5 x_prev, variance 0.5.
    x_prev, x_t = T([0.0], [math.sqrt(2.0)]), T([1.0], [1.0])
    g_prev, g_t = backward_scores(x_t, x_prev, 0.5, 1.0)
    # Sample 0: u = (1 − 0)/0.5 = 2; sample 1: x_t equals the mean, u = 0.
    assert torch.allclose(g_prev, T([math.sqrt(0.5) * 2.0], [0.0]))
    assert torch.allclose(g_t, T([-2.0], [0.0]))


def test_backward_scores_match_autograd_of_backward_log_prob():
    torch.manual_seed(0)
    x_t, x_prev = torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.randn(3, 2, 2, 2, dtype=torch.float64)
    a_t = torch.tensor([0.3, 0.6, 0.97], dtype=torch.float64)
    a_prev = torch.tensor([0.4, 0.8, 0.999], dtype=torch.float64)
    xt, xp = x_t.clone().requires_grad_(True), x_prev.clone().requires_grad_(True)
    auto_prev, auto_t = torch.autograd.grad(backward_log_prob(xt, xp, a_t, a_prev).sum(), (xp, xt))
    g_prev, g_t = backward_scores(x_t, x_prev, a_t, a_prev)
    assert torch.allclose(g_prev, auto_prev) and torch.allclose(g_t, auto_t)


def test_backward_scores_reject_zero_variance():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError):
        backward_scores(x, x, 0.5, 0.5)


def test_residuals_hand_values():
    s_theta, s_prior, f = T([1.0, 2.0]), T([3.0, -1.0]), T([0.5, 0.5])
    # s_θ − (κ s_# + F̃'),   s_θ − (κ s_# − F̃')
    assert torch.allclose(residual_forward(s_theta, s_prior, f, 2.0), T([1.0 - 6.5, 2.0 + 1.5]))
    assert torch.allclose(residual_reverse(s_theta, s_prior, f, 2.0), T([1.0 - 5.5, 2.0 + 2.5]))
    # s_θ − (∇log P_B + F'),   s_θ − (∇log P_B − F')
    assert torch.allclose(nabla_db_forward(s_theta, s_prior, f), T([-2.5, 2.5]))
    assert torch.allclose(nabla_db_reverse(s_theta, s_prior, f), T([-1.5, 3.5]))
    # Per-sample κ.
    two = torch.stack([s_theta[0], s_theta[0]])
    out = residual_forward(two, torch.stack([s_prior[0]] * 2), torch.stack([f[0]] * 2), torch.tensor([0.0, 1.0]))
    assert torch.allclose(out, T([0.5, 1.5], [-2.5, 2.5]))


def test_squared_norm_and_weighting():
    r = T([1.0, 2.0], [3.0, 4.0])
    assert torch.allclose(squared_norm(r), T(5.0, 25.0))
    assert torch.allclose(squared_norm(r, reduction="mean"), T(2.5, 12.5))
    std = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(squared_norm(r, std, "sigma2"), T(20.0, 6.25))
    assert torch.allclose(squared_norm(r, std, "sigma2"), squared_norm(r) * std**2)
    assert torch.allclose(squared_norm(r, 3.0, "sigma2"), 9.0 * squared_norm(r))
    with pytest.raises(ValueError):
        squared_norm(r, weighting="sigma2")
    with pytest.raises(ValueError):
        squared_norm(r, std, weighting="kl")
    # Image-shaped residuals reduce over every non-batch dim.
    assert squared_norm(torch.ones(3, 4, 2, 2)).tolist() == [16.0, 16.0, 16.0]


def test_sigma2_weighting_is_twice_the_gaussian_kl():
    # Same σ, means μ₁, μ₂: the forward-score residual at any x is (μ₁ − μ₂)/σ².
    mu1, mu2, sigma = T([0.3, -1.0]), T([0.1, 0.5]), 0.2
    x = T([0.7, 0.0])
    residual = -(x - mu1) / sigma**2 + (x - mu2) / sigma**2
    kl = ((mu1 - mu2) ** 2).sum(-1) / (2 * sigma**2)
    assert torch.allclose(squared_norm(residual, sigma, "sigma2"), 2 * kl)


def test_terminal_flow_loss_and_output_regularizer():
    assert torch.allclose(terminal_flow_loss(T([3.0, 4.0], [0.0, 1.0])), T(25.0, 1.0))
    new = T([1.0, 1.0], [2.0, 0.0]).requires_grad_(True)
    old = T([0.0, 1.0], [0.0, 0.0]).requires_grad_(True)
    reg = output_regularizer(new, old)
    assert torch.allclose(reg, T(1.0, 4.0))
    reg.sum().backward()
    # The stored output is a target: no gradient into it.
    assert old.grad is None and torch.allclose(new.grad, 2 * (new - old).detach())


# --------------------------------------------------------------------------- #
# ∇-DB = gradient of the DB condition (closed-form Gaussian case)
# --------------------------------------------------------------------------- #
A_T, A_PREV, SIGMA, BETA = 0.6, 0.8, 0.35, 1.7
GAMMA_T, GAMMA_PREV = A_T, A_PREV


def gaussian_policy(seed):
    """P_F(x_prev | x_t) = N(x_t Aᵀ + b, σ² I) in 2-D: mean, forward score and reverse score."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, 2, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    mean = lambda x_t: x_t @ A.T + b  # noqa: E731
    log_prob = lambda x_t, x_prev: gaussian_log_prob(x_prev, mean(x_t), SIGMA)  # noqa: E731
    # Closed forms: ∇_{x_prev} = −(x_prev − μ)/σ², ∇_{x_t} = Aᵀ(x_prev − μ)/σ² (row vectors: · A).
    fwd = lambda x_t, x_prev: -(x_prev - mean(x_t)) / SIGMA**2  # noqa: E731
    rev = lambda x_t, x_prev: (x_prev - mean(x_t)) @ A / SIGMA**2  # noqa: E731
    return log_prob, fwd, rev


def quadratic(seed):
    """h(x) = −½ xᵀQx + cᵀx (Q symmetric) and its gradient, per sample."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(2, 2, generator=g, dtype=torch.float64)
    Q, c = M @ M.T + 0.5 * torch.eye(2, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)
    value = lambda x: -0.5 * ((x @ Q) * x).sum(-1) + x @ c  # noqa: E731
    grad = lambda x: -x @ Q + c  # noqa: E731
    return value, grad


def reward():
    """r(x) = −‖x − (1, −0.5)‖² / 2 and ∇r."""
    centre = T(1.0, -0.5)
    return (lambda x: -0.5 * ((x - centre) ** 2).sum(-1)), (lambda x: -(x - centre))


def flow(h_t, h_prev, r):
    """Forward-looking log-flow: log F(x) = γ β r(x) + h(x), with its own h at t and at t−1."""
    return (lambda x: GAMMA_T * BETA * r(x) + h_t(x)), (lambda x: GAMMA_PREV * BETA * r(x) + h_prev(x))


def points(seed=1, batch=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, generator=g, dtype=torch.float64), torch.randn(batch, 2, generator=g, dtype=torch.float64)


def db_condition_grads(condition, x_t, x_prev):
    """(∂D/∂x_prev, ∂D/∂x_t) by autograd, per sample."""
    xt, xp = x_t.clone().requires_grad_(True), x_prev.clone().requires_grad_(True)
    d_prev, d_t = torch.autograd.grad(condition(xt, xp).sum(), (xp, xt))
    return d_prev, d_t


def test_nabla_db_residuals_are_gradients_of_the_db_condition():
    x_t, x_prev = points()
    log_pf, fwd, rev = gaussian_policy(0)
    (h_t, gh_t), (h_prev, gh_prev) = quadratic(1), quadratic(2)
    r, grad_r = reward()
    log_f_t, log_f_prev = flow(h_t, h_prev, r)

    def D(xt, xp):  # log F(x_t) + log P_F(x_prev|x_t) − log F(x_prev) − log P_B(x_t|x_prev)
        return log_f_t(xt) + log_pf(xt, xp) - log_f_prev(xp) - backward_log_prob(xt, xp, A_T, A_PREV)

    d_prev, d_t = db_condition_grads(D, x_t, x_prev)
    pb_prev, pb_t = backward_scores(x_t, x_prev, A_T, A_PREV)
    flow_prev = flow_score(gh_prev(x_prev), grad_r(x_prev), GAMMA_PREV, BETA)
    flow_t = flow_score(gh_t(x_t), grad_r(x_t), GAMMA_T, BETA)

    assert torch.allclose(nabla_db_forward(fwd(x_t, x_prev), pb_prev, flow_prev), d_prev)
    assert torch.allclose(nabla_db_reverse(rev(x_t, x_prev), pb_t, flow_t), d_t)

    # The assembled losses (no last transition) are the squared norms of those gradients.
    losses = nabla_db_losses(
        BalanceTerms(
            fwd(x_t, x_prev), rev(x_t, x_prev), pb_prev, pb_t,
            gh_prev(x_prev), gh_t(x_t), grad_r(x_prev), grad_r(x_t),
            GAMMA_PREV, GAMMA_T, torch.zeros(4, dtype=torch.bool),
        ),
        BETA,
    )
    assert torch.allclose(losses.forward, (d_prev**2).sum(-1))
    assert torch.allclose(losses.reverse, (d_t**2).sum(-1))
    assert torch.equal(losses.terminal, torch.zeros(4, dtype=torch.float64))


def residual_setup(kappa):
    """θ and # Gaussian policies, log F_# a quadratic, log F_θ = κ log F_# + log F̃ with log F̃ forward-looking."""
    log_pf_theta, fwd_theta, rev_theta = gaussian_policy(0)
    log_pf_prior, fwd_prior, rev_prior = gaussian_policy(5)
    (h_t, gh_t), (h_prev, gh_prev) = quadratic(1), quadratic(2)
    (fp_t, _), (fp_prev, _) = quadratic(3), quadratic(4)
    r, grad_r = reward()
    log_ft_t, log_ft_prev = flow(h_t, h_prev, r)  # the residual flow F̃
    log_pb = lambda xt, xp: backward_log_prob(xt, xp, A_T, A_PREV)  # noqa: E731

    def D_theta(xt, xp):
        return (kappa * fp_t(xt) + log_ft_t(xt)) + log_pf_theta(xt, xp) - (kappa * fp_prev(xp) + log_ft_prev(xp)) - log_pb(xt, xp)

    def D_prior(xt, xp):
        return fp_t(xt) + log_pf_prior(xt, xp) - fp_prev(xp) - log_pb(xt, xp)

    def residuals(x_t, x_prev):
        flow_prev = flow_score(gh_prev(x_prev), grad_r(x_prev), GAMMA_PREV, BETA)
        flow_t = flow_score(gh_t(x_t), grad_r(x_t), GAMMA_T, BETA)
        return (
            residual_forward(fwd_theta(x_t, x_prev), fwd_prior(x_t, x_prev), flow_prev, kappa),
            residual_reverse(rev_theta(x_t, x_prev), rev_prior(x_t, x_prev), flow_t, kappa),
        )

    scores = lambda x_t, x_prev, is_last: BalanceTerms(  # noqa: E731
        score_theta_fwd=fwd_theta(x_t, x_prev), score_base_fwd=fwd_prior(x_t, x_prev),
        score_theta_rev=rev_theta(x_t, x_prev), score_base_rev=rev_prior(x_t, x_prev),
        flow_correction_prev=gh_prev(x_prev), flow_correction_t=gh_t(x_t),
        reward_grad_prev=grad_r(x_prev), reward_grad_t=grad_r(x_t),
        gamma_prev=GAMMA_PREV, gamma_t=GAMMA_T, is_last=is_last,
    )
    return D_theta, D_prior, residuals, scores


def test_residual_nabla_db_is_gradient_of_theta_minus_prior_condition():
    x_t, x_prev = points()
    D_theta, D_prior, residuals, scores = residual_setup(kappa=1.0)
    # κ = 1: P_B cancels in D_θ − D_#, and F_θ/F_# = F̃.
    d_prev, d_t = db_condition_grads(lambda xt, xp: D_theta(xt, xp) - D_prior(xt, xp), x_t, x_prev)
    res_fwd, res_rev = residuals(x_t, x_prev)
    assert torch.allclose(res_fwd, d_prev)
    assert torch.allclose(res_rev, d_t)

    losses = residual_nabla_db_losses(scores(x_t, x_prev, torch.zeros(4, dtype=torch.bool)), BETA, kappa=1.0)
    assert torch.allclose(losses.forward, (d_prev**2).sum(-1))
    assert torch.allclose(losses.reverse, (d_t**2).sum(-1))


def test_residual_nabla_db_with_kappa_drops_only_the_backward_term():
    # For κ ≠ 1, ∂(D_θ − κ D_#) keeps −(1−κ)∇log P_B, which residual ∇-DB (like the paper) omits.
    kappa = 0.4
    x_t, x_prev = points()
    D_theta, D_prior, residuals, _ = residual_setup(kappa)
    d_prev, d_t = db_condition_grads(lambda xt, xp: D_theta(xt, xp) - kappa * D_prior(xt, xp), x_t, x_prev)
    res_fwd, res_rev = residuals(x_t, x_prev)
    pb_prev, pb_t = backward_scores(x_t, x_prev, A_T, A_PREV)
    assert torch.allclose(res_fwd - (1 - kappa) * pb_prev, d_prev)
    assert torch.allclose(res_rev - (1 - kappa) * pb_t, d_t)
    # κ reaches the residuals through the objective's own argument.
    _, _, _, scores = residual_setup(kappa)
    losses = residual_nabla_db_losses(scores(x_t, x_prev, torch.zeros(4, dtype=torch.bool)), BETA, kappa=kappa)
    assert torch.allclose(losses.forward, ((d_prev + (1 - kappa) * pb_prev) ** 2).sum(-1))
    assert torch.allclose(losses.reverse, ((d_t + (1 - kappa) * pb_t) ** 2).sum(-1))


def test_fused_reverse_score_equals_the_separate_terms():
    # reward_grad_t=None: score_theta_rev holds s_θ^rev + γ_t β ∇r(x_t), and the losses are unchanged.
    i = {k: v.detach() for k, v in random_inputs(seed=6).items()}
    is_last = torch.tensor([False, True, False])
    separate = balance_terms(i, is_last)
    fused = separate._replace(
        score_theta_rev=i["score_theta_rev"] + (separate.gamma_t * 2.0).view(-1, 1, 1) * i["reward_grad_t"],
        reward_grad_t=None,
    )
    for objective in (lambda t: residual_nabla_db_losses(t, 2.0, 0.8), lambda t: nabla_db_losses(t, 2.0)):
        for p, q in zip(objective(separate), objective(fused)):
            assert torch.allclose(p, q)


def test_last_transition_matches_the_terminal_db_condition():
    # On x_t → x_0 the flow at x_0 is exactly log F(x_0) = β r(x_0): the forward residual is
    # ∂D/∂x_0 with that terminal flow, whatever g_φ(x_0) and γ_prev are.
    x_t, x_0 = points(seed=3, batch=2)
    log_pf, fwd, rev = gaussian_policy(0)
    (h_t, gh_t), (_, gh_0) = quadratic(1), quadratic(2)
    r, grad_r = reward()
    log_f_t, _ = flow(h_t, h_t, r)

    def D(xt, x0):
        return log_f_t(xt) + log_pf(xt, x0) - BETA * r(x0) - backward_log_prob(xt, x0, A_T, A_PREV)

    d_0, _ = db_condition_grads(D, x_t, x_0)
    pb_0, pb_t = backward_scores(x_t, x_0, A_T, A_PREV)
    losses = nabla_db_losses(
        BalanceTerms(
            fwd(x_t, x_0), rev(x_t, x_0), pb_0, pb_t,
            gh_0(x_0), gh_t(x_t), grad_r(x_0), grad_r(x_t),
            0.123, GAMMA_T, torch.ones(2, dtype=torch.bool),
        ),
        BETA,
    )
    assert torch.allclose(losses.forward, (d_0**2).sum(-1))
    assert torch.equal(losses.reverse, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(losses.terminal, (gh_0(x_0) ** 2).sum(-1))


# --------------------------------------------------------------------------- #
# Terminal mask and weighting in the assembled losses
# --------------------------------------------------------------------------- #
def random_inputs(seed=0, batch=3, shape=(2, 2)):
    g = torch.Generator().manual_seed(seed)
    names = [
        "score_theta_fwd", "score_prior_fwd", "score_theta_rev", "score_prior_rev",
        "flow_correction_prev", "flow_correction_t", "reward_grad_prev", "reward_grad_t",
    ]
    return {n: torch.randn(batch, *shape, generator=g, dtype=torch.float64).requires_grad_(True) for n in names}


def balance_terms(inputs, is_last, gamma_prev=torch.tensor([0.5, 0.7, 0.9]), gamma_t=torch.tensor([0.4, 0.6, 0.8])):
    """``random_inputs`` as the objective's named container (the prior's scores as the base)."""
    i = dict(inputs)
    return BalanceTerms(
        score_base_fwd=i.pop("score_prior_fwd"), score_base_rev=i.pop("score_prior_rev"),
        gamma_prev=gamma_prev, gamma_t=gamma_t, is_last=is_last, **i,
    )


def residual_losses(inputs, is_last, **kw):
    kw = {"beta": 2.0, "kappa": 0.8, **kw}
    return residual_nabla_db_losses(balance_terms(inputs, is_last), **kw)


def test_terminal_mask_forward_target_has_no_flow_correction_and_is_detached():
    inputs = random_inputs()
    is_last = torch.tensor([False, True, False])
    losses = residual_losses(inputs, is_last)
    i = {k: v.detach() for k, v in inputs.items()}

    # Last sample: target sg(κ s_# + 1·β∇r(x_0)), no g_φ, γ_prev ignored.
    target_last = 0.8 * i["score_prior_fwd"][1] + 2.0 * i["reward_grad_prev"][1]
    assert torch.allclose(losses.forward[1], ((i["score_theta_fwd"][1] - target_last) ** 2).sum())
    # Other samples: target κ s_# + γ_prev β ∇r + g_φ(x_prev).
    target_0 = 0.8 * i["score_prior_fwd"][0] + 0.5 * 2.0 * i["reward_grad_prev"][0] + i["flow_correction_prev"][0]
    assert torch.allclose(losses.forward[0], ((i["score_theta_fwd"][0] - target_0) ** 2).sum())

    losses.forward.sum().backward()
    # Only the model's own score receives gradient on the last sample: the target is constant.
    for name in ("score_prior_fwd", "reward_grad_prev", "flow_correction_prev"):
        grad = inputs[name].grad
        assert torch.equal(grad[1], torch.zeros_like(grad[1])), name
        assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0, name
    assert inputs["score_theta_fwd"].grad[1].abs().sum() > 0


def test_terminal_mask_zeroes_reverse_and_keeps_terminal_only_on_last():
    inputs = random_inputs(seed=1)
    is_last = torch.tensor([True, False, True])
    losses = residual_losses(inputs, is_last)
    g0 = inputs["flow_correction_prev"].detach()
    assert losses.reverse[0] == 0 and losses.reverse[2] == 0 and losses.reverse[1] > 0
    assert torch.allclose(losses.terminal, torch.stack([(g0[0] ** 2).sum(), torch.tensor(0.0, dtype=torch.float64), (g0[2] ** 2).sum()]))
    # L_term trains g_φ(x_0) towards 0.
    losses.terminal.sum().backward()
    assert torch.allclose(inputs["flow_correction_prev"].grad[0], 2 * g0[0])
    # Whatever is passed for the reverse terms of a last sample cannot reach its loss value.
    bad = {k: v.detach().clone() for k, v in random_inputs(seed=1).items()}
    bad["score_theta_rev"][0] = float("nan")
    assert residual_losses(bad, is_last).reverse[0] == 0


def test_all_non_terminal_matches_residual_functions():
    inputs = random_inputs(seed=2)
    i = {k: v.detach() for k, v in inputs.items()}
    gp, gt = torch.tensor([0.5, 0.7, 0.9]), torch.tensor([0.4, 0.6, 0.8])
    losses = residual_losses(i, torch.zeros(3, dtype=torch.bool))
    res_f = residual_forward(i["score_theta_fwd"], i["score_prior_fwd"], flow_score(i["flow_correction_prev"], i["reward_grad_prev"], gp, 2.0), 0.8)
    res_r = residual_reverse(i["score_theta_rev"], i["score_prior_rev"], flow_score(i["flow_correction_t"], i["reward_grad_t"], gt, 2.0), 0.8)
    assert torch.allclose(losses.forward, squared_norm(res_f))
    assert torch.allclose(losses.reverse, squared_norm(res_r))
    assert torch.allclose(losses.total(0.5), losses.forward + 0.5 * losses.reverse + losses.terminal)


def test_sigma2_weighting_in_losses():
    i = {k: v.detach() for k, v in random_inputs(seed=3).items()}
    is_last = torch.tensor([False, False, True])
    std = torch.tensor([0.9, 0.3, 0.05], dtype=torch.float64)
    plain = residual_losses(i, is_last)
    weighted = residual_losses(i, is_last, std=std, weighting="sigma2")
    assert torch.allclose(weighted.forward, plain.forward * std**2)
    assert torch.allclose(weighted.reverse, plain.reverse * std**2)
    # The terminal condition is not a transition: it is not weighted.
    assert torch.allclose(weighted.terminal, plain.terminal)


def test_terminal_gamma_parameter():
    i = {k: v.detach() for k, v in random_inputs(seed=4).items()}
    is_last = torch.tensor([True, True, True])
    a = residual_losses(i, is_last, terminal_gamma=1.0)
    b = residual_losses(i, is_last, terminal_gamma=0.0)
    expected = ((i["score_theta_fwd"] - 0.8 * i["score_prior_fwd"]) ** 2).sum((1, 2))
    assert torch.allclose(b.forward, expected) and not torch.allclose(a.forward, expected)


def test_nabla_db_losses_use_backward_scores_in_place_of_prior():
    # nabla_db_losses(pb) = residual_nabla_db_losses(prior = pb, κ = 1).
    i = {k: v.detach() for k, v in random_inputs(seed=5).items()}
    is_last = torch.tensor([False, True, False])
    terms = balance_terms(i, is_last, gamma_prev=0.5, gamma_t=0.4)
    plain = nabla_db_losses(terms, beta=2.0)
    resid = residual_nabla_db_losses(terms, beta=2.0, kappa=1.0)
    for p, q in zip(plain, resid):
        assert torch.allclose(p, q)


def test_mask_shape_is_checked():
    with pytest.raises(ValueError):
        residual_losses(random_inputs(), torch.tensor([True, False]))
