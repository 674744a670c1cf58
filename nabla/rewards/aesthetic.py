"""The LAION aesthetic predictor (the paper's "aesthetic" reward at the SD 1.5 scale).

score = MLP(e / ‖e‖), e = CLIP ViT-L/14's projected image embedding of the image resized to
224×224 (bicubic) and normalised with CLIP's channel statistics, as the ∇-GFlowNet and DDPO
releases compute it. The MLP is the improved aesthetic predictor's "sac+logos+ava1-l14-linearMSE"
head (768 → 1024 → 128 → 64 → 16 → 1), whose weights TRL hosts as
``trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth``. Both load only from local paths or the
local Hugging Face cache; see :mod:`nabla.hub`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nabla.hub import HubModel, resolve
from nabla.rewards.base import Reward, register_reward

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_FILES = ("*.json", "*.txt", "model.safetensors")


def aesthetic_head(embedding_dim: int = 768) -> nn.Sequential:
    """The predictor's MLP; dropout layers kept so that its state-dict keys are the original's."""
    return nn.Sequential(
        nn.Linear(embedding_dim, 1024), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images in [0, 1] → CLIP's input: bicubic resize to size×size, channel-normalised (differentiable)."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@register_reward
class Aesthetic(Reward):
    """LAION aesthetic score of each image (about 1–10); prompts are ignored."""

    name = "aesthetic"
    scales = ("sd15",)

    def __init__(
        self,
        clip_model: str = "openai/clip-vit-large-patch14",
        predictor_repo: str = "trl-lib/ddpo-aesthetic-predictor",
        predictor_file: str = "aesthetic-model.pth",
    ):
        super().__init__()
        from transformers import CLIPModel

        clip_ref, head_ref = self.required_models(clip_model, predictor_repo, predictor_file)
        clip = CLIPModel.from_pretrained(str(resolve(clip_ref)), local_files_only=True, dtype=torch.float32)
        self.vision = clip.vision_model
        self.projection = clip.visual_projection
        self.image_size = clip.config.vision_config.image_size
        self.head = aesthetic_head(clip.config.projection_dim)
        path = resolve(head_ref)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        self.head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})

    @staticmethod
    def required_models(
        clip_model: str = "openai/clip-vit-large-patch14",
        predictor_repo: str = "trl-lib/ddpo-aesthetic-predictor",
        predictor_file: str = "aesthetic-model.pth",
    ) -> list[HubModel]:
        return [
            HubModel(clip_model, purpose="aesthetic reward: CLIP ViT-L/14 image encoder", allow_patterns=CLIP_FILES),
            HubModel(predictor_repo, predictor_file, purpose="aesthetic reward: LAION aesthetic MLP head"),
        ]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (B, D)."""
        pixels = clip_preprocess(images, self.image_size)
        embedding = self.projection(self.vision(pixel_values=pixels).pooler_output)
        return embedding / embedding.norm(dim=-1, keepdim=True)

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.head(self.embed(samples)).squeeze(1)
