"""∇-GFlowNet: the `residual_nabla_db` (the paper's method) and `nabla_db` methods.

Both train the fine-tuned denoiser θ and a flow-score network g_φ on sampled transitions
x_t → x_prev with the gradient-informed detailed-balance losses of :mod:`nabla.objectives`.
They differ only in the "base" scores the policy's scores are matched against, and so in the
objective that takes them:

* residual ∇-DB: the prior's forward and reverse scores, with κ, in
  ``objectives.residual_nabla_db_losses`` (target p#^κ · exp(βr));
* ∇-DB: the scores of the fixed backward kernel P_B in ``objectives.nabla_db_losses``
  (target exp(βr) alone).

One batch's loss, in order: ``_losses`` computes every score once and names them in an
``objectives.BalanceTerms``; the method's ``objective`` turns them into residuals and per-sample
losses; ``loss`` adds λ's output regulariser and takes the batch mean. The options and their
release defaults are ``NablaDBOptions``'. The release's flow net zeroes only its output bias; ours
zeroes the whole output layer so that g_φ ≡ 0 at the start.
"""


from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from nabla import diffusion, objectives
from nabla.flow import build_flow_network
from nabla.methods import LossOutput, Method, Rollouts, Transitions, register_method


@dataclass
class NablaDBOptions:
    """The ∇-GFlowNets' options; defaults are the official release's (lzzcd001/nabla-gfn), sources
    in config/README.md.

    Args:
        reward_scale: β (release: 1e3 by default, 1e4 for aesthetic and HPSv2).
        pretrained_strength: κ, the prior's exponent in residual ∇-DB's target p#^κ·exp(βr)
            (residual ∇-DB only).
        reverse_loss_weight: w_B, the reverse loss's weight.
        reverse_trains_policy: whether the reverse loss backpropagates into θ through s_θ^rev
            (release: no, it trains only g_φ).
        no_flow: g_φ ≡ 0 and w_B = 0.
        gamma_mode: γ_t = ᾱ_t ("squared", release) or √ᾱ_t ("sqrt").
        output_reg: λ on ‖ε̂_θ − ε̂_old‖² (release: 1e3 by default, 1e2–2e3 by reward). ε̂_old is the
            output stored at sampling time, so the term acts only off-policy: training on the
            previous round, or after the first of several updates per round; on-policy with one
            update its gradient is 0.
        weighting: "score" (release: squared score residuals) or "sigma2" (σ_t²-weighted: twice the
            kernels' KL).
        reduction: "mean" (release: squared residuals averaged over elements) or "sum".
        transition_fraction: the share of each trajectory's transitions trained on, the last always
            included (release 0.1).
        stratified: low-variance (one per stratum) subsampling of those transitions (release).
        train_on_previous_round: round r trains on round r−1's trajectories (release).
        updates_per_round: optimiser steps per round (release: 16 × 4 trajectories per epoch,
            4 × 8 per optimiser step).
        microbatch_size: transitions per forward pass (gradient accumulation beyond).
        flow_conditioned: g_φ sees the prompt (image scales).
        flow_channels: g_φ's UNet widths at the image scales.
    """

    reward_scale: float = 1e3
    pretrained_strength: float = 1.0
    reverse_loss_weight: float = 1.0
    reverse_trains_policy: bool = False
    no_flow: bool = False
    gamma_mode: str = "squared"
    output_reg: float = 1e3
    weighting: str = "score"
    reduction: str = "mean"
    transition_fraction: float = 0.1
    stratified: bool = True
    train_on_previous_round: bool = True
    updates_per_round: int = 2
    microbatch_size: int = 32
    flow_conditioned: bool = True
    flow_channels: tuple[int, ...] = (32, 64)

    def __post_init__(self):
        if self.gamma_mode not in objectives.GAMMA_MODES:
            raise ValueError(f"gamma_mode must be one of {objectives.GAMMA_MODES}, got {self.gamma_mode!r}")
        if self.weighting not in objectives.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {objectives.WEIGHTINGS}, got {self.weighting!r}")


class _NablaGFlowNet(Method):
    Options = NablaDBOptions
    needs_stochastic_sampler = True

    def __init__(self, options, backend, reward, sampler, total_rounds: int = 1):
        super().__init__(options, backend, reward, sampler, total_rounds)
        self.flow = None
        if not options.no_flow:
            shape = tuple(backend.sample_shape)
            if len(shape) == 1:
                self.flow = build_flow_network("mlp", shape)
            else:
                cond_dim = backend.encode_prompts([""]).shape[-1] if options.flow_conditioned else None
                self.flow = build_flow_network(
                    "unet", shape, conditioned=options.flow_conditioned, cross_attention_dim=cond_dim,
                    block_out_channels=options.flow_channels,
                ).to(backend.device)

    @classmethod
    def target_beta(cls, options, sample_shape) -> float:
        # scores of summed log-densities: residual ∇-DB's p#^κ·exp(βr) (exact at κ = 1), ∇-DB's exp(βr)
        return options.reward_scale

    @property
    def trains_on_previous_round(self) -> bool:
        return self.options.train_on_previous_round

    @property
    def uses_reverse_loss(self) -> bool:
        return self.options.reverse_loss_weight > 0 and not self.options.no_flow

    def modules(self):
        return {"flow": self.flow} if self.flow is not None else {}

    def plan(self, batch: Rollouts, generator: torch.Generator):
        return self.subsampled_transition_plan(batch, generator)

    # -- pieces of the loss ---------------------------------------------------------------------
    def _reward_gradient(self, x: torch.Tensor, x0_hat: torch.Tensor, prompts) -> torch.Tensor:
        """∇_x r(decode(x̂_0(x))) through the denoiser, decoder and reward (x̂_0 built from x)."""
        reward = self.reward(self.backend.decode(x0_hat), prompts)
        (grad,) = torch.autograd.grad(reward.sum(), x, retain_graph=True)
        return grad.detach()

    def _reward_gradient_at_prev(self, tr: Transitions, a_prev, cond, uncond) -> torch.Tensor:
        """Reward gradient at x_prev: through θ's one-step x̂_0, or directly at x_0 on last steps."""
        x = tr.x_prev.detach().requires_grad_(True)
        x0_hat = x
        inner = ~tr.is_last
        if inner.any():
            idx = inner.nonzero().squeeze(1)
            sub = lambda c: None if c is None else c[idx]  # noqa: E731
            out = self.guided(x[idx], tr.t_prev[idx], sub(cond), sub(uncond))
            x0_inner = diffusion.predict_x0(out, x[idx], a_prev[idx], self.backend.prediction_type)
            x0_hat = x.index_put((idx,), x0_inner)
        return self._reward_gradient(x, x0_hat, tr.prompts)

    def flow_terms_at_prev(self, tr: Transitions, a_prev, cond, uncond) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_φ(x_prev), ∇r at x_prev): the learned and the reward part of ∇log F̃(x_prev)."""
        return self._flow(tr.x_prev, tr.t_prev, cond), self._reward_gradient_at_prev(tr, a_prev, cond, uncond)

    def _flow(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if self.flow is None:
            return torch.zeros_like(x)
        return self.flow(x, t.clamp(min=0), cond if self.options.flow_conditioned else None)

    def base_scores(self, tr: Transitions, a_t, a_prev, std, cond, uncond, reverse: bool):
        """(forward, reverse) scores the policy's are matched against, without graphs (reverse
        only if asked, else zeros): ``BalanceTerms.score_base_*``."""
        raise NotImplementedError

    def objective(self, terms: objectives.BalanceTerms, std) -> objectives.NablaDBLosses:
        """The method's per-sample losses of a batch's balance terms (σ_t: ``std``)."""
        raise NotImplementedError

    def _policy_reverse_side(self, x_t, out, mean, tr: Transitions, a_t, std, beta_gamma_t):
        """(s_θ^rev, ∇r(x_t)) at x_t through θ's forward `out`, for the reverse residual.

        Unless the reverse loss trains θ (a graph through s_θ^rev, the reward gradient detached),
        the residual needs only s_θ^rev + γ_t β ∇r(x_t): one VJP through the same forward gives the
        sum, returned as the first term with None as the second (``objectives.BalanceTerms``).
        """
        o, ptype = self.options, self.backend.prediction_type
        x0_hat = diffusion.predict_x0(out, x_t, a_t, ptype)
        if o.reverse_trains_policy:
            score_rev = diffusion.reverse_score(x_t, tr.x_prev, mean, std, create_graph=True, retain_graph=True)
            return score_rev, self._reward_gradient(x_t, x0_hat, tr.prompts)
        log_prob = diffusion.gaussian_log_prob(tr.x_prev, mean, std, reduction="sum")
        reward = self.reward(self.backend.decode(x0_hat), tr.prompts)
        (combined,) = torch.autograd.grad((log_prob + beta_gamma_t * reward).sum(), x_t, retain_graph=True)
        return combined.detach(), None

    def _losses(self, tr: Transitions, reverse: bool):
        """Per-sample losses of transitions that all have (or all lack) a reverse term."""
        o = self.options
        eta, ptype = self.sampler.eta, self.backend.prediction_type
        a_t, a_prev, std = self.transition_coefficients(tr)
        gamma_t = objectives.gamma_schedule(a_t, o.gamma_mode)
        cond, uncond = self.conditions(tr.prompts)
        # One fine-tuned forward at x_t serves the forward score, the reverse score and ∇r(x_t).
        x_t = tr.x_t.detach().requires_grad_(reverse)
        out = self.guided(x_t, tr.t, cond, uncond)
        mean = diffusion.ddim_mean(out, x_t, a_t, a_prev, eta, ptype)
        score_fwd = diffusion.forward_score(tr.x_prev, mean, std)
        zeros = torch.zeros_like(x_t)
        score_rev, reward_grad_t = zeros, zeros
        if reverse:
            score_rev, reward_grad_t = self._policy_reverse_side(x_t, out, mean, tr, a_t, std, o.reward_scale * gamma_t)
        base_fwd, base_rev = self.base_scores(tr, a_t, a_prev, std, cond, uncond, reverse)
        flow_prev, reward_grad_prev = self.flow_terms_at_prev(tr, a_prev, cond, uncond)
        terms = objectives.BalanceTerms(
            score_theta_fwd=score_fwd, score_theta_rev=score_rev, score_base_fwd=base_fwd, score_base_rev=base_rev,
            flow_correction_prev=flow_prev, flow_correction_t=self._flow(tr.x_t, tr.t, cond) if reverse else zeros,
            reward_grad_prev=reward_grad_prev, reward_grad_t=reward_grad_t,
            gamma_prev=objectives.gamma_schedule(a_prev, o.gamma_mode), gamma_t=gamma_t, is_last=tr.is_last,
        )
        losses = self.objective(terms, std)
        regularizer = objectives.output_regularizer(out, tr.model_output_old, o.reduction)
        return losses, regularizer, reward_grad_prev.flatten(1).norm(dim=1)

    def loss(self, tr: Transitions) -> LossOutput:
        o = self.options
        # Last transitions (x_prev = x_0) have no reverse term: they skip its gradients and the
        # prior's graph, so the batch splits into the transitions with and without one.
        is_last = tr.is_last
        groups = [(idx, reverse) for idx, reverse in ((~is_last, self.uses_reverse_loss), (is_last, False)) if idx.any()]
        # A double backward through attention needs the math SDPA kernel on CPU.
        attention = sdpa_kernel(SDPBackend.MATH) if o.reverse_trains_policy else nullcontext()
        w_b = o.reverse_loss_weight if self.uses_reverse_loss else 0.0
        parts: list[dict[str, torch.Tensor]] = []
        with attention:
            for mask, reverse in groups:
                losses, regularizer, grad_norm = self._losses(tr.select(mask.nonzero().squeeze(1)), reverse)
                parts.append({
                    "total": losses.total(w_b) + o.output_reg * regularizer,
                    **{f"loss_{name}": value for name, value in losses._asdict().items()},
                    "loss_output_reg": regularizer, "reward_grad_norm": grad_norm,
                })
        mean = {k: torch.cat([part[k] for part in parts]).mean() for k in parts[0]}
        total = mean.pop("total")
        return LossOutput(total, {k: v.item() for k, v in mean.items()})


@register_method
class ResidualNablaDB(_NablaGFlowNet):
    """Residual ∇-DB: match θ's scores to κ × the prior's plus the residual flow score."""

    name = "residual_nabla_db"
    label, color = "residual ∇-DB", "#d62728"  # in tables and figures
    target = "tilted"

    def base_scores(self, tr, a_t, a_prev, std, cond, uncond, reverse):
        x = tr.x_t.detach().requires_grad_(reverse)
        with self.backend.adapter(False), torch.set_grad_enabled(reverse):
            out = self.guided(x, tr.t, cond, uncond)
            mean = diffusion.ddim_mean(out, x, a_t, a_prev, self.sampler.eta, self.backend.prediction_type)
            score_rev = diffusion.reverse_score(x, tr.x_prev, mean, std) if reverse else torch.zeros_like(x)
        return diffusion.forward_score(tr.x_prev, mean.detach(), std), score_rev

    def objective(self, terms, std):
        o = self.options
        return objectives.residual_nabla_db_losses(
            terms, beta=o.reward_scale, kappa=o.pretrained_strength, std=std, weighting=o.weighting, reduction=o.reduction,
        )


@register_method
class NablaDB(_NablaGFlowNet):
    """Plain ∇-DB: match θ's scores to the backward kernel's plus the flow score (target exp(βr))."""

    name = "nabla_db"
    label, color = "∇-DB", "#7b4173"  # in tables and figures
    target = "reward_only"

    def base_scores(self, tr, a_t, a_prev, std, cond, uncond, reverse):
        return objectives.backward_scores(tr.x_t, tr.x_prev, a_t, a_prev)

    def objective(self, terms, std):
        o = self.options
        return objectives.nabla_db_losses(terms, beta=o.reward_scale, std=std, weighting=o.weighting, reduction=o.reduction)
