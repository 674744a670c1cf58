"""The flow-score correction network g_φ(x, t, c) of residual ∇-DB.

It returns a vector field shaped like ``x`` that is added to the forward-looking reward term,
``∇log F̃(x_t) ≈ γ_t β ∇r(x̂_0(x_t)) + g_φ(x_t, t, c)`` (see :mod:`nabla.objectives`). Its whole
output layer (weight and bias) is zeroed, so g_φ ≡ 0 at initialisation: training starts from
the pure forward-looking estimate, and the gradients into the output layer are still non-zero
so the network learns from the first step.

* ``FlowScoreMLP`` — points (the 2-D toy); ignores conditioning.
* ``FlowScoreUNet`` — latents; a small diffusers ``UNet2DConditionModel`` (prompt-conditioned
  through cross-attention) or ``UNet2DModel`` (unconditional).
* ``build_flow_network`` — picks one from a config.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

FLOW_NETWORK_KINDS = ("mlp", "unet")


def _zero_(layer: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place: an exactly-zero output whatever its input."""
    with torch.no_grad():
        for param in layer.parameters():
            param.zero_()
    return layer


def _timesteps(t: torch.Tensor | int | float, batch_size: int, device: torch.device) -> torch.Tensor:
    """Timesteps as a ``(B,)`` tensor (accepts a number, a 0-d, 1-element or ``(B,)`` tensor)."""
    t = torch.as_tensor(t, device=device)
    return t.reshape(-1).expand(batch_size) if t.numel() == 1 else t.reshape(batch_size)


class FlowScoreMLP(nn.Module):
    """g_φ(x, t) for points: an MLP on [x, emb(t)] with ``layers`` SiLU hidden layers.

    ``emb`` is the sinusoidal timestep embedding a denoiser uses, so the network sees t on the
    scheduler's scale (0 … num_train_timesteps). The conditioning argument is ignored.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time_embed_dim: int = 64) -> None:
        super().__init__()
        self.dim, self.time_embed_dim = dim, time_embed_dim
        blocks: list[nn.Module] = []
        width = dim + time_embed_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        blocks.append(_zero_(nn.Linear(width, dim)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: ``(B, dim)``; t: number or ``(B,)``; returns ``(B, dim)``."""
        t = _timesteps(t, x.shape[0], x.device)
        emb = get_timestep_embedding(t, self.time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.net(torch.cat([x, emb.to(x.dtype)], dim=-1))


class FlowScoreUNet(nn.Module):
    """g_φ(x, t, c) for latents ``(C, H, W)``: a small diffusers UNet with ``conv_out`` zeroed.

    With ``cross_attention_dim`` the UNet is a ``UNet2DConditionModel`` that attends to the
    prompt embeddings (``cond``: ``(B, L, cross_attention_dim)``, e.g. the backend's
    ``encode_prompts``); the first resolution has no attention (as in the tiny prior, it is the
    most expensive one). Without it, an unconditional ``UNet2DModel`` that ignores ``cond``.
    """

    def __init__(
        self,
        sample_shape: Sequence[int] = (4, 16, 16),
        block_out_channels: Sequence[int] = (32, 64),
        cross_attention_dim: Optional[int] = None,
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        norm_num_groups: Optional[int] = None,
    ) -> None:
        super().__init__()
        channels, height, width = sample_shape
        n = len(block_out_channels)
        self.sample_shape = tuple(sample_shape)
        self.conditioned = cross_attention_dim is not None
        common = dict(
            sample_size=(height, width) if height != width else height,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups or min(32, block_out_channels[0]),
        )
        if self.conditioned:
            from diffusers import UNet2DConditionModel  # imported here: diffusers' UNets take seconds to load

            self.unet = UNet2DConditionModel(
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
                cross_attention_dim=cross_attention_dim,
                **common,
            )
        else:
            from diffusers import UNet2DModel

            self.unet = UNet2DModel(
                down_block_types=("DownBlock2D",) * n,
                up_block_types=("UpBlock2D",) * n,
                **common,
            )
        _zero_(self.unet.conv_out)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: ``(B, C, H, W)``; t: number or ``(B,)``; cond: prompt embeddings if conditioned."""
        t = _timesteps(t, x.shape[0], x.device)
        dtype = self.unet.dtype
        if self.conditioned:
            if cond is None:
                raise ValueError("this flow network is prompt-conditioned: pass cond (B, L, cross_attention_dim)")
            out = self.unet(x.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
        else:
            out = self.unet(x.to(dtype), t).sample
        return out.to(x.dtype)


def build_flow_network(
    kind: str,
    sample_shape: Sequence[int],
    conditioned: bool = False,
    cross_attention_dim: Optional[int] = None,
    **kwargs,
) -> nn.Module:
    """The flow-score network for a backend: ``"mlp"`` for points ``(dim,)``, ``"unet"`` for
    latents ``(C, H, W)``. ``conditioned`` needs ``kind="unet"`` and ``cross_attention_dim``
    (the text encoder's hidden size). Extra keyword arguments go to the network's constructor.
    """
    if kind == "mlp":
        if conditioned:
            raise ValueError("the MLP flow network cannot use conditioning; use kind='unet'")
        if len(sample_shape) != 1:
            raise ValueError(f"kind='mlp' needs a flat sample shape (dim,), got {tuple(sample_shape)}")
        return FlowScoreMLP(dim=int(sample_shape[0]), **kwargs)
    if kind == "unet":
        if len(sample_shape) != 3:
            raise ValueError(f"kind='unet' needs a sample shape (C, H, W), got {tuple(sample_shape)}")
        if conditioned and cross_attention_dim is None:
            raise ValueError("a conditioned flow network needs cross_attention_dim")
        return FlowScoreUNet(sample_shape, cross_attention_dim=cross_attention_dim if conditioned else None, **kwargs)
    raise ValueError(f"flow network kind must be one of {FLOW_NETWORK_KINDS}, got {kind!r}")
