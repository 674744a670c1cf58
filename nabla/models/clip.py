"""CLIP's image tower as a differentiable module: images in [0, 1] → L2-normalised embeddings.

Shared by the aesthetic reward (its LAION head reads this embedding) and the ``clip`` feature
extractor of the sd15 metrics. Weights load only from a local path or the local Hugging Face cache
(:mod:`nabla.hub`); float32, as the releases compute rewards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nabla.hub import HubModel, resolve

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_FILES = ("*.json", "*.txt", "model.safetensors")
CLIP_L14 = "openai/clip-vit-large-patch14"


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images in [0, 1] → CLIP's input: bicubic resize to size×size, channel-normalised (differentiable)."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_hub_model(repo: str = CLIP_L14, purpose: str = "CLIP ViT-L/14 image encoder") -> HubModel:
    return HubModel(repo, purpose=purpose, allow_patterns=CLIP_FILES)


class ClipImageEmbedding(nn.Module):
    """The projected image embedding of a CLIPModel, L2-normalised: (B, 3, H, W) in [0, 1] → (B, D)."""

    def __init__(self, model: HubModel):
        super().__init__()
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(str(resolve(model)), local_files_only=True, dtype=torch.float32)
        self.vision = clip.vision_model
        self.projection = clip.visual_projection
        self.image_size = clip.config.vision_config.image_size
        self.dim = clip.config.projection_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.projection(self.vision(pixel_values=clip_preprocess(images, self.image_size)).pooler_output)
        return embedding / embedding.norm(dim=-1, keepdim=True)
