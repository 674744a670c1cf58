"""Random-weight Stable-Diffusion pipelines: SD 1.5's exact architecture, or a tiny one of the same form.

Nothing here may download SD 1.5, yet its code path must be exercised: the GPU smoke test runs
the real SD 1.5 shapes (860M-parameter UNet, 512×512 VAE, 12-layer CLIP text encoder) with
random weights when the hub weights are absent, and the CPU tests use ``tiny-random``, which keeps
SD's block types (cross-attention down/up blocks, a plain last down block, four latent channels)
at a few thousand parameters. Only speed, memory and plumbing mean anything with random weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from nabla.models.tokenizer import write_word_tokenizer

# Stable Diffusion 1.5's component configs (runwayml/stable-diffusion-v1-5 model_index components).
SD15 = {
    "unet": dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    ),
    "text_encoder": dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    ),
}

# The same block structure at test size: 16×16 images, 4×8×8 latents.
TINY_RANDOM = {
    "unet": dict(SD15["unet"], sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32),
    "vae": dict(SD15["vae"], down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(32, 32), layers_per_block=1, sample_size=16),
    "text_encoder": dict(SD15["text_encoder"], vocab_size=1000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2),
}

SHAPES = {"sd15": SD15, "tiny-random": TINY_RANDOM}

# SD 1.5's noise schedule, with the DDIM offsets every sampler here assumes.
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)

# Words the random tokenizer knows; any other word falls back to characters.
TOKENIZER_WORDS = ("a", "photo", "of", "cat", "dog", "horse", "rabbit", "painting", "red", "blue")


def random_sd_pipeline(shape: str = "sd15", seed: int = 0, device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of the named architecture with seeded random weights."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}'; known: {', '.join(SHAPES)}")
    spec = SHAPES[shape]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_word_tokenizer(TOKENIZER_WORDS, folder, max_length=spec["text_encoder"]["max_position_embeddings"])
    text_config = CLIPTextConfig(
        **spec["text_encoder"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Build on the target device: initialising 860M parameters on a GPU takes a second, not a minute.
    with torch.device(device):
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text_encoder = CLIPTextModel(text_config)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_random_sd_pipeline(shape: str, out: str | Path, seed: int = 0, device: str | torch.device = "cpu") -> Path:
    """Write a random pipeline as a diffusers folder that `SDBackend.from_pretrained` loads."""
    out = Path(out)
    random_sd_pipeline(shape, seed, device).save_pretrained(out, safe_serialization=True)
    return out
