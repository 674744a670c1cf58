"""The 2-D toy backend: a small MLP ε-denoiser pretrained on an exact Gaussian mixture.

The toy exists so every method can be scored against a closed-form target (see
``nabla.data.toy2d``); this module supplies the "pretrained" prior p# it fine-tunes:

* ``MLPDenoiser`` — ε(x_t, t) from x_t and a sinusoidal embedding of t, plain nn.Linear layers
  so LoRA can wrap every one of them;
* ``pretrain_toy2d`` — ε-prediction regression on exact mixture samples;
* ``save_toy2d`` / ``load_toy2d`` — safetensors weights + one JSON config (model, mixture,
  scheduler), so a checkpoint carries its own ground truth;
* ``Toy2dBackend`` — the ``DiffusionBackend`` the methods see, with a LoRA adapter on every
  linear layer (``LoRALinear``: one matmul per call, so the toy's many small passes stay cheap).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file
import torch.nn.functional as F
from torch import nn

from nabla.data.toy2d import GaussianMixture, circle_mixture
from nabla.models.base import DiffusionBackend
from nabla.models.lora import FoldCache

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"


# -- network ----------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)] with geometric frequencies f_i: (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * freqs.to(t.device)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@dataclass(frozen=True)
class MLPConfig:
    """Hyperparameters of ``MLPDenoiser`` (stored in the checkpoint's JSON)."""

    dim: int = 2
    hidden: int = 128
    depth: int = 3  # number of hidden layers
    time_embed_dim: int = 64


class MLPDenoiser(nn.Module):
    """ε(x_t, t): an MLP on [x_t, emb(t)] with ``depth`` SiLU hidden layers of width ``hidden``."""

    def __init__(self, config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width_in = config.dim + config.time_embed_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width_in, config.hidden), nn.SiLU()]
            width_in = config.hidden
        layers.append(nn.Linear(width_in, config.dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, dim); t: (B,) or scalar timesteps in [0, num_train_timesteps)."""
        emb = timestep_embedding(t.reshape(-1)[:1] if t.numel() == 1 else t, self.config.time_embed_dim)
        return self.net(torch.cat([x, emb.to(x.dtype).expand(x.shape[0], -1)], dim=-1))


class LoRALinear(nn.Module):
    """A frozen linear layer plus a low-rank update: y = x (W + (α/r) B A)ᵀ + b.

    A is Kaiming-uniform (as peft's default LoRA init), B = 0, so the layer starts equal to the
    frozen one. The update is folded into the weight before one matmul (:mod:`nabla.models.lora`:
    for the toy's narrow layers cheaper than two thin passes through A and B; without autograd
    folded once per change of A or B); off (``enabled``) it is exactly the frozen layer.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        bound = 1 / math.sqrt(base.in_features)  # kaiming_uniform_(a=√5): U(±1/√fan_in)
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)
        self.scaling = alpha / rank
        self.enabled = True
        self._fold = FoldCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return F.linear(x, self.base.weight, self.base.bias)
        return F.linear(x, self._fold.weight(self.base.weight, self.lora_A, self.lora_B, self.scaling), self.base.bias)


# -- scheduler --------------------------------------------------------------------------------
def toy2d_scheduler() -> DDIMScheduler:
    """The toy's DDIM scheduler.

    The cosine schedule ("squaredcos_cap_v2") spends more of the 1000 steps at low noise than the
    linear one and ends at ᾱ_T ≈ 2e-9, so x_T is pure noise even for the radius-4 mixture;
    ε-regression trains well on it. ``set_alpha_to_one=False`` with ``steps_offset=1`` makes the
    last DDIM step land on ᾱ_0 ≈ 1 − 4e-5 rather than an extrapolated ᾱ = 1.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
        prediction_type="epsilon",
    )


# -- pretraining ------------------------------------------------------------------------------
def pretrain_toy2d(
    mixture: GaussianMixture,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    ema_decay: float = 0.999,
    scheduler: DDIMScheduler | None = None,
    config: MLPConfig = MLPConfig(),
) -> tuple[MLPDenoiser, list[float]]:
    """Fit ε(x_t, t) by MSE on fresh exact samples; returns (EMA model in eval mode, losses).

    Every step draws a new batch from the mixture, so there is no overfitting to guard against;
    AdamW with cosine decay to zero, and an EMA of the weights (decay ``ema_decay``, 0 disables)
    smooths the last steps' noise out of the returned model.
    """
    scheduler = scheduler or toy2d_scheduler()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the layers' initialisation
    model = MLPDenoiser(config)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)
    num_t = scheduler.config.num_train_timesteps
    losses: list[float] = []
    for step in range(steps):
        x0 = mixture.sample(batch_size, generator)[0].to(torch.float32)
        t = torch.randint(0, num_t, (batch_size,), generator=generator)
        noise = torch.randn(batch_size, mixture.dim, generator=generator)
        a = alphas_cumprod[t][:, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = (model(x_t, t) - noise).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        # warm the EMA up (decay grows from 0) so early random weights do not linger in it
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
    return ema.eval(), losses


# -- checkpoints ------------------------------------------------------------------------------
class Toy2dCheckpoint(NamedTuple):
    model: MLPDenoiser
    mixture: GaussianMixture
    scheduler: DDIMScheduler


def save_toy2d(
    model: MLPDenoiser,
    mixture: GaussianMixture,
    directory: str | Path,
    scheduler: DDIMScheduler | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (model, mixture, scheduler) to directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scheduler = scheduler or toy2d_scheduler()
    # contiguous CPU copies: safetensors refuses shared or strided storage
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))
    config = {
        "model": asdict(model.config),
        "mixture": mixture.to_dict(),
        # diffusers' bookkeeping keys (leading "_") are not constructor arguments
        "scheduler": {k: v for k, v in scheduler.config.items() if not k.startswith("_")},
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return directory / WEIGHTS_NAME


def load_toy2d(directory: str | Path) -> Toy2dCheckpoint:
    """Read a ``save_toy2d`` directory back: (model in eval mode, mixture, scheduler)."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_NAME).read_text())
    model = MLPDenoiser(MLPConfig(**config["model"]))
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    mixture = GaussianMixture.from_dict(config["mixture"])
    scheduler = DDIMScheduler.from_config(config["scheduler"])
    return Toy2dCheckpoint(model.eval(), mixture, scheduler)


@dataclass
class Toy2dPretrainConfig:
    """What `python -m nabla pretrain --scale toy2d` trains: the default circle mixture's prior."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 512
    lr: float = 2e-3
    ema_decay: float = 0.999


def pretrain_and_save_toy2d(cfg: Toy2dPretrainConfig, out: str | Path) -> Path:
    mixture = circle_mixture()
    model, losses = pretrain_toy2d(
        mixture, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, ema_decay=cfg.ema_decay
    )
    save_toy2d(model, mixture, out)
    out = Path(out)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    (out / "pretrain_log.csv").write_text(
        "step,loss\n" + "".join(f"{i},{loss:.6g}\n" for i, loss in enumerate(losses))
    )
    return out


# -- backend ----------------------------------------------------------------------------------
class Toy2dBackend(DiffusionBackend):
    """Unconditional 2-D backend: the MLP prior with a LoRA adapter on all its nn.Linear layers.

    Base weights are frozen; only the adapter trains. With the adapter off the model is exactly
    the prior p#; a fresh adapter has B = 0, so θ equals the prior until it is trained.
    """

    sample_shape = (2,)

    def __init__(
        self,
        model: MLPDenoiser,
        scheduler: DDIMScheduler | None = None,
        mixture: GaussianMixture | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.scheduler = scheduler or toy2d_scheduler()
        self.mixture = mixture  # the prior's ground truth, for evaluation
        self.sample_shape = (model.config.dim,)
        self._device = torch.device(device)
        self._lora: dict | None = None  # the adapter's r and α, once added
        self._adapter_enabled = False

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu"):
        model, mixture, scheduler = load_toy2d(directory)
        return cls(model, scheduler, mixture, device)

    @property
    def device(self) -> torch.device:
        return self._device

    # -- conditioning (none) --------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> None:
        return None

    def null_condition(self, batch_size: int) -> None:
        return None

    # -- denoiser -------------------------------------------------------------------------------
    def model_output(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ε(x_t, t); ``cond`` is ignored (the toy is unconditional)."""
        return self.model(x_t, torch.as_tensor(t, device=x_t.device))

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Points are what the reward sees: identity."""
        return x0

    # -- adapter --------------------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float | None = None, seed: int = 0) -> None:
        """Wrap every nn.Linear in a LoRALinear (r = rank, α = alpha or rank, B = 0)."""
        if self._lora is not None:
            raise RuntimeError("this backend already has a LoRA adapter")
        generator = torch.Generator().manual_seed(seed)  # A's initialisation, apart from the global stream
        alpha = float(rank if alpha is None else alpha)
        layers = self.model.net
        for index, module in enumerate(layers):
            if isinstance(module, nn.Linear):
                layers[index] = LoRALinear(module, rank, alpha, generator)
        self.model.to(self._device)
        self._lora = {"r": rank, "lora_alpha": alpha}
        self.set_adapter_enabled(True)

    def _lora_layers(self) -> list[LoRALinear]:
        return [m for m in self.model.modules() if isinstance(m, LoRALinear)]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self._lora_layers() for p in (layer.lora_A, layer.lora_B)]

    @property
    def adapter_enabled(self) -> bool:
        return self._adapter_enabled

    def set_adapter_enabled(self, enabled: bool) -> None:
        if self._lora is None:
            if enabled:
                raise RuntimeError("no LoRA adapter to enable: call add_lora or load_lora first")
            return
        for layer in self._lora_layers():
            layer.enabled = enabled
        self._adapter_enabled = enabled

    def save_lora(self, directory: str | Path) -> Path:
        """Write ``adapter_model.safetensors`` and ``adapter_config.json``; returns the weights."""
        if self._lora is None:
            raise RuntimeError("no LoRA adapter to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if "lora_" in k}
        save_file(state, str(directory / ADAPTER_WEIGHTS_NAME))
        (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(self._lora))
        return directory / ADAPTER_WEIGHTS_NAME

    def load_lora(self, directory: str | Path) -> None:
        """Restore an adapter written by ``save_lora`` (adding one of its rank if none exists)."""
        directory = Path(directory)
        saved = json.loads((directory / ADAPTER_CONFIG_NAME).read_text())
        if self._lora is None:
            self.add_lora(saved["r"], saved["lora_alpha"])
        elif saved != self._lora:
            raise ValueError(f"saved adapter has {saved}; this backend's has {self._lora}")
        state = load_file(str(directory / ADAPTER_WEIGHTS_NAME), device=str(self._device))
        own = {k for k in self.model.state_dict() if "lora_" in k}
        if set(state) != own:
            raise ValueError(f"adapter mismatch: missing {sorted(own - set(state))}, unexpected {sorted(set(state) - own)}")
        self.model.load_state_dict(state, strict=False)
