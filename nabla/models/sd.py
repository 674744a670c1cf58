"""The Stable-Diffusion backend: any SD-shaped pipeline (the tiny prior or SD 1.5) plus LoRA.

Models load only from a local folder or the local Hugging Face cache (`local_files_only=True`);
nothing here downloads. The LoRA adapter sits on the UNet's attention projections
(to_q, to_k, to_v, to_out.0) through peft, and is saved in diffusers' LoRA format
(`pytorch_lora_weights.safetensors`), so `StableDiffusionPipeline.load_lora_weights(dir)` reads it.
Its layers run folded (``FoldedLoraLinear``, :mod:`nabla.models.lora`): one matmul each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from nabla.errors import UserError
from nabla.hub import HubModel, is_local_path
from nabla.models.base import DiffusionBackend
from nabla.models.lora import FoldCache

#: the files of a diffusers SD folder that the backend loads (not the single-file checkpoints)
PIPELINE_FILES = (
    "model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json", "text_encoder/model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_FILE = "pytorch_lora_weights.safetensors"


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model is neither a local folder nor in the local Hugging Face cache."""


def fetch_hint(model_id: str) -> str:
    return (
        f"model '{model_id}' is not a local folder and is not in the local Hugging Face cache "
        f"(HF_HOME={_hf_home()}). Nothing is downloaded at run time. Fetch it on a machine with "
        f"internet:  hf download {model_id}   (or: python -c \"from huggingface_hub import "
        f"snapshot_download; snapshot_download('{model_id}')\"), then copy the cache here."
    )


def pipeline_model(model: str | Path) -> HubModel:
    return HubModel(str(model), purpose="Stable-Diffusion-shaped prior", allow_patterns=PIPELINE_FILES)


def _hf_home() -> str:
    from huggingface_hub import constants

    return constants.HF_HOME


def load_pipeline(model: str | Path, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """Load an SD-shaped pipeline from a folder or the local hub cache, never from the network."""
    kwargs = dict(
        dtype=dtype,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if Path(model).is_dir():
        return StableDiffusionPipeline.from_pretrained(str(model), **kwargs)
    if is_local_path(model):  # never named as a hub id to fetch
        why = "there is no such folder" if not Path(model).exists() else "it holds no model_index.json"
        raise ModelNotFoundError(f"'{model}' is not a diffusers model folder: {why}")
    try:
        return StableDiffusionPipeline.from_pretrained(str(model), **kwargs)
    except (OSError, ValueError) as error:  # hub cache miss surfaces as OSError/EnvironmentError
        raise ModelNotFoundError(fetch_hint(str(model))) from error


class FoldedLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear, run folded when it is the plain case: one active adapter, no dropout,
    variant or LoRA bias, and frozen and adapter weights in the input's dtype. Anything else
    (a half-precision frozen UNet with float32 LoRA, mixed-adapter batches, a merged adapter)
    goes through peft's own forward. Registered with ``LoraConfig._register_custom_module``,
    so peft's state dicts, saving and loading are unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fold_cache = FoldCache()

    def _foldable(self, x: torch.Tensor, kwargs: dict) -> str | None:
        """The adapter to fold, or None where peft's path must run."""
        if self.disable_adapters or self.merged or kwargs or self.fan_in_fan_out:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1:
            return None
        (name,) = active
        base = self.get_base_layer()
        plain = (name not in self.lora_variant and isinstance(self.lora_dropout[name], torch.nn.Identity)
                 and not self.lora_bias[name])
        same_dtype = base.weight.dtype == self.lora_A[name].weight.dtype == self.lora_B[name].weight.dtype == x.dtype
        return name if plain and same_dtype else None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = None if args else self._foldable(x, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        weight = self._fold_cache.weight(base.weight, self.lora_A[name].weight, self.lora_B[name].weight,
                                         self.scaling[name])
        return F.linear(x, weight, base.bias)


class SDBackend(DiffusionBackend):
    """Wraps a StableDiffusionPipeline: frozen VAE, text encoder and UNet, plus a UNet LoRA."""

    def __init__(self, pipeline: StableDiffusionPipeline):
        self.pipeline = pipeline
        self.unet, self.vae = pipeline.unet, pipeline.vae
        self.text_encoder, self.tokenizer = pipeline.text_encoder, pipeline.tokenizer
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        # DDIM with SD's offsets whatever scheduler the folder ships (the math assumes DDIM).
        self.scheduler = DDIMScheduler.from_config(
            pipeline.scheduler.config, steps_offset=1, set_alpha_to_one=False, clip_sample=False
        )
        size = self.unet.config.sample_size
        self.sample_shape = (self.unet.config.in_channels, size, size)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._adapter_enabled = False
        self._has_lora = False

    @classmethod
    def from_pretrained(cls, model: str | Path, dtype: torch.dtype = torch.float32) -> "SDBackend":
        return cls(load_pipeline(model, dtype))

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: torch.device | str) -> "SDBackend":
        self.pipeline.to(device)
        self._prompt_cache.clear()
        return self

    def set_frozen_dtype(self, dtype: torch.dtype) -> "SDBackend":
        """Hold the frozen UNet and text encoder in `dtype` (bfloat16 halves their memory).

        The VAE stays in float32: the reward gradient flows back through its decoder, and the
        release found reward gradients in bfloat16 too inaccurate. LoRA weights stay float32, and
        outputs come back as float32 (``model_output``), so every loss is computed in float32.
        """
        self.unet.to(dtype)
        self.text_encoder.to(dtype)
        for p in self.lora_parameters():
            p.data = p.data.float()
        self._prompt_cache.clear()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's blocks in the backward pass: activation memory for compute."""
        self.unet.enable_gradient_checkpointing()

    # -- conditioning -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        # The text encoder is frozen: cache one embedding per distinct prompt.
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:
            ids = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            for prompt, embedding in zip(missing, self.text_encoder(ids)[0]):
                self._prompt_cache[prompt] = embedding.float()  # float32 whatever the encoder's dtype
        return torch.stack([self._prompt_cache[p] for p in prompts])

    # -- denoiser -----------------------------------------------------------------------------
    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        dtype = self.unet.dtype
        out = self.unet(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
        return out.to(x_t.dtype)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of images in [-1, 1]: the VAE posterior's mean, scaled as the UNet sees them."""
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean.float() * self.vae.config.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        latents = (x0 / self.vae.config.scaling_factor).to(self.vae.dtype)
        images = self.vae.decode(latents).sample.to(x0.dtype)
        return (images / 2 + 0.5).clamp(0, 1)

    # -- adapter ------------------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float | None = None, seed: int = 0) -> None:
        if self._has_lora:
            raise RuntimeError("a LoRA adapter is already attached")
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha if alpha is not None else rank,
            init_lora_weights="gaussian",
            target_modules=LORA_TARGETS,
        )
        config._register_custom_module({torch.nn.Linear: FoldedLoraLinear})
        # The A matrices are random: seed them so a run's initial adapter is reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet.add_adapter(config)
        # LoRA weights train in float32 even when the frozen UNet is in half precision.
        for p in self.lora_parameters():
            p.data = p.data.float()
        self._has_lora = True
        self._adapter_enabled = True

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "lora_" in n]

    @property
    def adapter_enabled(self) -> bool:
        return self._adapter_enabled

    def set_adapter_enabled(self, enabled: bool) -> None:
        if not self._has_lora:
            if enabled:
                raise RuntimeError("no LoRA adapter attached: call add_lora first")
            return
        if enabled:
            self.unet.enable_adapters()
        else:
            self.unet.disable_adapters()
        self._adapter_enabled = enabled

    def save_lora(self, directory: str | Path) -> Path:
        directory = Path(directory)
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        StableDiffusionPipeline.save_lora_weights(
            directory, unet_lora_layers=state, safe_serialization=True
        )
        return directory / LORA_FILE

    def load_lora(self, directory: str | Path) -> None:
        if not self._has_lora:
            raise RuntimeError("attach an adapter of the saved rank with add_lora before loading")
        state = load_file(str(Path(directory) / LORA_FILE))
        state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        result = set_peft_model_state_dict(self.unet, convert_unet_state_dict_to_peft(state))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"LoRA file has keys the adapter lacks: {result.unexpected_keys[:3]}")
