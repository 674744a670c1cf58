"""ImageReward (Xu et al., 2023): the paper's "imagereward" reward at sd15.

A BLIP image–text preference model: the prompt's [CLS] state, reading the image through
cross-attention, through a linear head, normalised by the release's mean and std (about −2…2).
The release's weights (``THUDM/ImageReward``: ``ImageReward.pt``, ``med_config.json``) run on
transformers' BLIP classes (:mod:`nabla.models.imagereward`), tokenized with bert-base-uncased's
vocabulary as the release does; everything loads from local caches (:mod:`nabla.hub`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from nabla.hub import HubModel, check_available
from nabla.models.imagereward import VIT_LARGE, load_imagereward_checkpoint, tokenize
from nabla.rewards.base import Reward, register_reward

IMAGEREWARD_REPO = "THUDM/ImageReward"
TOKENIZER = "google-bert/bert-base-uncased"


@register_reward
class ImageReward(Reward):
    """ImageReward's normalised score of each image for its prompt (prompts required)."""

    name = "imagereward"
    scales = ("sd15",)

    def __init__(self, repo: str = IMAGEREWARD_REPO, tokenizer: str = TOKENIZER, vision: dict | None = None):
        """``vision``: the ViT's shape (:data:`~nabla.models.imagereward.VIT_LARGE`, the release's,
        by default); its weights do not tell its number of heads."""
        from transformers import BertTokenizer

        super().__init__()
        checkpoint, med_config, vocabulary = check_available(self.required_models(repo, tokenizer)).values()
        self.scorer = load_imagereward_checkpoint(checkpoint, med_config, vision or VIT_LARGE)
        self.tokenizer = BertTokenizer.from_pretrained(str(vocabulary), local_files_only=True)

    @staticmethod
    def required_models(repo: str = IMAGEREWARD_REPO, tokenizer: str = TOKENIZER, vision: dict | None = None) -> list[HubModel]:
        return [
            HubModel(repo, "ImageReward.pt", purpose="imagereward reward: BLIP weights"),
            HubModel(repo, "med_config.json", purpose="imagereward reward: its text encoder's config"),
            HubModel(tokenizer, purpose="imagereward reward: bert-base-uncased vocabulary",
                     allow_patterns=("*.json", "*.txt")),
        ]

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = self.require_prompts(samples, prompts)
        return self.scorer(samples, *tokenize(self.tokenizer, prompts))
