"""HPSv2.1, the Human Preference Score v2.1 (Wu et al., 2023): the paper's "hpsv2" reward at sd15.

score = ⟨ê_image, ê_text⟩: the cosine similarity of the image's and the prompt's embeddings from an
open_clip ViT-H/14 fine-tuned on human preference pairs (HPDv2), as the HPSv2 package scores (the
diagonal of image · textᵀ, no logit scale), about 0.2–0.35. Images are resized to 224×224 (bicubic)
and CLIP-normalised, differentiably, as the release's reward does.

The weights are the open_clip state dict ``xswu/HPSv2/HPS_v2.1_compressed.pt``, converted to a
transformers CLIPModel (:mod:`nabla.models.open_clip`), whose architecture and tokenizer come from
the transformers port of the same base model, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``
(its config and tokenizer files only). Everything loads from local caches (:mod:`nabla.hub`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from nabla.hub import HubModel, check_available
from nabla.models.clip import ClipImageEmbedding, ClipTextEmbedding
from nabla.models.open_clip import load_open_clip_checkpoint
from nabla.rewards.base import Reward, register_reward

HPS_REPO = "xswu/HPSv2"
HPS_FILE = "HPS_v2.1_compressed.pt"
BASE_MODEL = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register_reward
class HPSv2(Reward):
    """Human preference score of each image for its prompt (prompts required)."""

    name = "hpsv2"
    scales = ("sd15",)

    def __init__(self, checkpoint_repo: str = HPS_REPO, checkpoint_file: str = HPS_FILE, base_model: str = BASE_MODEL):
        from transformers import CLIPTokenizer

        super().__init__()
        checkpoint, base_dir = check_available(self.required_models(checkpoint_repo, checkpoint_file, base_model)).values()
        clip = load_open_clip_checkpoint(checkpoint, base_dir)
        self.image = ClipImageEmbedding(clip)
        self.text = ClipTextEmbedding(clip, CLIPTokenizer.from_pretrained(str(base_dir), local_files_only=True))

    @staticmethod
    def required_models(
        checkpoint_repo: str = HPS_REPO, checkpoint_file: str = HPS_FILE, base_model: str = BASE_MODEL
    ) -> list[HubModel]:
        return [
            HubModel(checkpoint_repo, checkpoint_file, purpose="hpsv2 reward: HPSv2.1 weights (open_clip ViT-H/14)"),
            HubModel(base_model, purpose="hpsv2 reward: ViT-H/14 config and tokenizer", allow_patterns=("*.json", "*.txt")),
        ]

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = self.require_prompts(samples, prompts)
        return (self.image(samples) * self.text(prompts)).sum(dim=-1)
