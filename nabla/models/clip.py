"""CLIP's towers as modules: images in [0, 1] (differentiably) or prompts → L2-normalised embeddings.

The image tower is shared by the aesthetic reward (its LAION head reads this embedding) and the
``clip`` feature extractor of the sd15 metrics; HPSv2 compares it with the text tower's embedding.
Weights load only from a local path or the local Hugging Face cache (:mod:`nabla.hub`); float32,
as the releases compute rewards.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nabla.hub import HubModel, resolve

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_FILES = ("*.json", "*.txt", "model.safetensors")
CLIP_L14 = "openai/clip-vit-large-patch14"


def resize_bicubic(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize to ``size`` (an int: square), differentiable; the identity at the
    same size. Antialiased, as PIL's and torchvision's resize that the reward and metric networks
    here were trained and released with: downsampling 512 → 224 without it aliases."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def clip_normalize(images: torch.Tensor) -> torch.Tensor:
    """CLIP's channel normalisation of images in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images in [0, 1] → CLIP's input: resized to size×size, channel-normalised (differentiable)."""
    return clip_normalize(resize_bicubic(images, size))


def clip_hub_model(repo: str = CLIP_L14, purpose: str = "CLIP ViT-L/14 image encoder") -> HubModel:
    return HubModel(repo, purpose=purpose, allow_patterns=CLIP_FILES)


def load_clip(model: HubModel):
    """A transformers CLIPModel from a local folder or the local Hugging Face cache, in float32."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(resolve(model)), local_files_only=True, dtype=torch.float32)


class ClipImageEmbedding(nn.Module):
    """The projected image embedding of a CLIPModel, L2-normalised: (B, 3, H, W) in [0, 1] → (B, D)."""

    def __init__(self, clip):
        super().__init__()
        self.vision = clip.vision_model
        self.projection = clip.visual_projection
        self.image_size = clip.config.vision_config.image_size
        self.dim = clip.config.projection_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.projection(self.vision(pixel_values=clip_preprocess(images, self.image_size)).pooler_output)
        return embedding / embedding.norm(dim=-1, keepdim=True)


class ClipTextEmbedding(nn.Module):
    """The projected text embedding of a CLIPModel, L2-normalised: prompts → (B, D), no gradient
    (rewards differentiate with respect to images only). Prompts are padded or truncated to the
    tokenizer's context (77 for CLIP), ending in the end-of-text token the text tower pools at."""

    def __init__(self, clip, tokenizer):
        super().__init__()
        self.text = clip.text_model
        self.projection = clip.text_projection
        self.tokenizer = tokenizer

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        device = self.projection.weight.device
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(device)
        embedding = self.projection(self.text(input_ids=tokens).pooler_output)
        return embedding / embedding.norm(dim=-1, keepdim=True)
