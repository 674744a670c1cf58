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
from torch import nn

from nabla.hub import HubModel, resolve
from nabla.models.clip import CLIP_L14, ClipImageEmbedding, clip_hub_model, load_clip
from nabla.rewards.base import Reward, register_reward


def aesthetic_head(embedding_dim: int = 768) -> nn.Sequential:
    """The predictor's MLP; dropout layers kept so that its state-dict keys are the original's."""
    return nn.Sequential(
        nn.Linear(embedding_dim, 1024), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


@register_reward
class Aesthetic(Reward):
    """LAION aesthetic score of each image (about 1–10); prompts are ignored."""

    name = "aesthetic"
    scales = ("sd15",)

    def __init__(
        self,
        clip_model: str = CLIP_L14,
        predictor_repo: str = "trl-lib/ddpo-aesthetic-predictor",
        predictor_file: str = "aesthetic-model.pth",
    ):
        super().__init__()
        clip_ref, head_ref = self.required_models(clip_model, predictor_repo, predictor_file)
        self.clip = ClipImageEmbedding(load_clip(clip_ref))
        self.head = aesthetic_head(self.clip.dim)
        path = resolve(head_ref)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        self.head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})

    @staticmethod
    def required_models(
        clip_model: str = CLIP_L14,
        predictor_repo: str = "trl-lib/ddpo-aesthetic-predictor",
        predictor_file: str = "aesthetic-model.pth",
    ) -> list[HubModel]:
        return [
            clip_hub_model(clip_model, "aesthetic reward: CLIP ViT-L/14 image encoder"),
            HubModel(predictor_repo, predictor_file, purpose="aesthetic reward: LAION aesthetic MLP head"),
        ]

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.head(self.clip(samples)).squeeze(1)
