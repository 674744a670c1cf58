"""The one interface every method sees: a denoiser with an optional fine-tuning adapter.

A backend hides what differs between scales (a Stable-Diffusion pipeline, a 2-D MLP) behind
the few operations the samplers and losses need: encode prompts, predict the model output with
the adapter on (fine-tuned θ) or off (prior #), combine the two guidance branches in one
batched call, decode to images, and save/load the adapter as safetensors.
"""

from __future__ import annotations

import abc
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from diffusers import DDIMScheduler


class DiffusionBackend(abc.ABC):
    """A pretrained denoiser plus a LoRA adapter that the methods fine-tune."""

    scheduler: DDIMScheduler
    #: shape of one sample in the diffusion space, e.g. (4, 16, 16) latents or (2,) points
    sample_shape: tuple[int, ...]

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    # -- conditioning -------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor | None:
        """Conditioning for each prompt (None for an unconditional backend)."""

    def null_condition(self, batch_size: int) -> torch.Tensor | None:
        """The empty-prompt conditioning used by the unconditional CFG branch."""
        return self.encode_prompts([""] * batch_size)

    # -- denoiser -----------------------------------------------------------------------------
    @abc.abstractmethod
    def model_output(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """Raw denoiser output (ε, v or x0 according to prediction_type) with the adapter as it is."""

    @contextmanager
    def adapter(self, enabled: bool) -> Iterator[None]:
        """Run the block with the fine-tuning adapter on (θ) or off (the prior #)."""
        previous = self.adapter_enabled
        self.set_adapter_enabled(enabled)
        try:
            yield
        finally:
            self.set_adapter_enabled(previous)

    def guided_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                      uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guidance u + w (c − u), both branches in one batched call."""
        return self.guided_and_conditional(x_t, t, cond, uncond, guidance_scale)[0]

    def guided_and_conditional(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                               uncond: torch.Tensor | None, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided output, conditional output c) of one batched call: a loss that needs the
        conditional prediction beside the guided one reads it here instead of a second forward."""
        if uncond is None or guidance_scale == 1.0:
            out = self.model_output(x_t, t, cond)
            return out, out
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        out_uncond, out_cond = self.model_output(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])).chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond), out_cond

    # -- images -------------------------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Map clean samples to what a reward sees: images in [0, 1] (identity for points)."""

    # -- adapter ------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_lora(self, rank: int, alpha: float | None = None, seed: int = 0) -> None:
        """Attach a fresh LoRA adapter (B = 0, so the fine-tuned model starts equal to the prior)."""

    @abc.abstractmethod
    def lora_parameters(self) -> list[torch.nn.Parameter]: ...

    @property
    @abc.abstractmethod
    def adapter_enabled(self) -> bool: ...

    @abc.abstractmethod
    def set_adapter_enabled(self, enabled: bool) -> None: ...

    @abc.abstractmethod
    def save_lora(self, directory: str | Path) -> Path:
        """Write the adapter weights as safetensors; returns the file written."""

    @abc.abstractmethod
    def load_lora(self, directory: str | Path) -> None: ...
