"""ImageReward (Xu et al., 2023) on transformers' BLIP classes alone.

ImageReward scores an image against its prompt with BLIP: a ViT-L/16 encodes the 224×224 image,
a BERT text encoder with cross-attention to every image token reads the prompt, and the hidden
state of the text's first token ([CLS], as tokenized, not BLIP's [ENC]) goes through a 5-layer
linear head (no activations: the ReLUs are commented out in the release), then
``(reward - 0.16717362830052426) / 1.0333394966054072``.

The release (``image-reward`` 1.5) needs timm, fairscale and torchvision. Its networks are the ones
transformers' ``BlipVisionModel`` and ``BlipTextModel`` compute, under other parameter names:
timm's ViT (fused qkv, LayerNorm eps 1e-6, exact GELU, final norm) and BLIP's ``med.py`` BERT
(word + position embeddings only, post-LN layers, cross-attention in every layer). Converting
the checkpoint (``THUDM/ImageReward``: ``ImageReward.pt`` and ``med_config.json``) lets the
reward run without those packages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from nabla.models.checkpoints import unplaced_keys_error
from nabla.models.clip import clip_normalize, resize_bicubic

#: the reward's normalisation, ``(reward - MEAN) / STD`` (ImageReward.py, ImageReward.__init__)
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: prompts are padded / truncated to this many bert-base-uncased tokens, [CLS] … [SEP] [PAD]…
MAX_LENGTH = 35
#: the head's widths after the text encoder's hidden size (fixed in the release's MLP)
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
#: BLIP's ViT-L as ImageReward builds it (create_vit("large", 224); timm-style defaults otherwise)
VIT_LARGE = dict(image_size=224, patch_size=16, width=1024, depth=24, heads=16, mlp_ratio=4.0)

# -- configs ------------------------------------------------------------------------------------
def blip_configs(med_config: Mapping | str | Path, vision: Mapping = VIT_LARGE):
    """(BlipVisionConfig, BlipTextConfig) of ImageReward's BLIP from its ``med_config.json`` (a
    path or the parsed dict) and the ViT's shape (``VIT_LARGE`` for the release).

    Dropout is 0: the release scores in eval mode, and a reward never trains.
    """
    from transformers import BlipTextConfig, BlipVisionConfig

    if not isinstance(med_config, Mapping):
        med_config = json.loads(Path(med_config).read_text())
    # med.py builds cross-attention only with add_cross_attention, and its embeddings handle only
    # absolute positions; anything else is another network
    if not med_config.get("add_cross_attention", False):
        raise ValueError("med_config has no cross-attention (add_cross_attention): not ImageReward's text encoder")
    if med_config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported position_embedding_type {med_config['position_embedding_type']!r}")

    vision_config = BlipVisionConfig(
        hidden_size=vision["width"],
        intermediate_size=int(vision["width"] * vision["mlp_ratio"]),
        num_hidden_layers=vision["depth"],
        num_attention_heads=vision["heads"],
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        hidden_act="gelu",  # timm's nn.GELU: the exact (erf) GELU
        layer_norm_eps=1e-6,  # BLIP's ViT, not transformers' default 1e-5
        attention_dropout=0.0,
    )
    text_config = BlipTextConfig(
        vocab_size=med_config["vocab_size"],
        hidden_size=med_config["hidden_size"],
        # BLIP_Pretrain overrides the file's encoder_width (768) with the ViT's width
        encoder_hidden_size=vision["width"],
        intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        # generation-only ids (BLIP's [DEC] etc.): the encoder reads none of them
        bos_token_id=None, eos_token_id=None, sep_token_id=None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # transformers adds the cross-attention layers only to a "decoder" config; the forward
        # pass's own is_decoder=False (the default) keeps self-attention bidirectional, as
        # BlipForImageTextRetrieval's ITM path runs it
        is_decoder=True,
        use_cache=False,
    )
    return vision_config, text_config


# -- state-dict conversion ----------------------------------------------------------------------
#: the BLIP_Pretrain parts ImageReward's score never uses (contrastive projections) and the text
#: embeddings' position-id buffer, which transformers rebuilds itself
DROPPED = {
    "blip.vision_proj.weight", "blip.vision_proj.bias",
    "blip.text_proj.weight", "blip.text_proj.bias",
    "blip.text_encoder.embeddings.position_ids",
}
VISION_RENAMES = {
    "blip.visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "blip.visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "blip.visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "blip.visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "blip.visual_encoder.norm.weight": "vision_model.post_layernorm.weight",
    "blip.visual_encoder.norm.bias": "vision_model.post_layernorm.bias",
}
#: parts of one timm ViT block → BlipEncoderLayer; both keep q, k, v fused in one (3D, D) matrix
#: in the same [q; k; v] order and head-major layout, so qkv maps as is
VISION_BLOCK_PARTS = {
    "norm1": "layer_norm1", "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
VISION_BLOCK = re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
#: med.py's BERT and BlipTextModel share every parameter name; these are the ones a BertModel
#: without pooler, with cross-attention, has
TEXT = re.compile(
    r"^blip\.text_encoder\.("
    r"embeddings\.(word_embeddings|position_embeddings)\.weight"
    r"|embeddings\.LayerNorm\.(weight|bias)"
    r"|encoder\.layer\.\d+\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)"
    r"|encoder\.layer\.\d+\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)"
    r"|encoder\.layer\.\d+\.intermediate\.dense\.(weight|bias)"
    r"|encoder\.layer\.\d+\.output\.(dense|LayerNorm)\.(weight|bias)"
    r")$"
)
#: the head's nn.Sequential: Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear
HEAD_LINEARS = {0: 0, 2: 1, 4: 2, 6: 3, 7: 4}
HEAD = re.compile(r"^mlp\.layers\.(\d+)\.(weight|bias)$")


def imagereward_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ImageReward state dict (``ImageReward.pt``: ``blip.visual_encoder.*``,
    ``blip.text_encoder.*``, ``mlp.layers.*``) → the keys of :class:`ImageRewardScorer`
    (``vision_model.*``: BlipVisionModel, ``text_encoder.*``: BlipTextModel, ``head.*``).

    Raises ValueError naming every key it does not know, rather than loading another network.
    """
    converted, unknown = {}, []
    for key, value in state.items():
        if key in DROPPED:
            continue
        if key in VISION_RENAMES:
            converted[VISION_RENAMES[key]] = value
        elif (m := VISION_BLOCK.match(key)) and m[2] in VISION_BLOCK_PARTS:
            converted[f"vision_model.encoder.layers.{m[1]}.{VISION_BLOCK_PARTS[m[2]]}.{m[3]}"] = value
        elif TEXT.match(key):
            converted["text_encoder." + key[len("blip.text_encoder."):]] = value
        elif (m := HEAD.match(key)) and int(m[1]) in HEAD_LINEARS:
            converted[f"head.{HEAD_LINEARS[int(m[1])]}.{m[2]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise unplaced_keys_error(unknown, "the ImageReward checkpoint", "the transformers BLIP port")
    return converted


# -- the scorer ---------------------------------------------------------------------------------
def preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images in [0, 1] → the ViT's input, differentiably, as the release's transform: bicubic
    resize of the shorter side to ``size`` (torchvision's rounding), centre crop, CLIP's mean/std.
    The antialiased resize matches torchvision ≥ 0.17 on tensors (ReFL's path) and, up to 8-bit
    rounding, PIL's in ``ImageReward.score``."""
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(size * long / short)  # torchvision truncates
        new_hw = (size, new_long) if h <= w else (new_long, size)
        images = resize_bicubic(images, new_hw)
        top = int(round((new_hw[0] - size) / 2.0))
        left = int(round((new_hw[1] - size) / 2.0))
        images = images[..., top:top + size, left:left + size]
    return clip_normalize(images)


def tokenize(tokenizer, prompts: Sequence[str], max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) as ImageReward tokenizes: bert-base-uncased, padded to and
    truncated at 35 tokens, the first one [CLS] (ImageReward does not swap in BLIP's [ENC])."""
    tokens = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


class ImageRewardScorer(nn.Module):
    """ImageReward's normalised reward of images (B, 3, H, W) in [0, 1] for token ids and
    attention masks (B, L), shape (B,), differentiable w.r.t. the images; float32."""

    def __init__(self, vision_config, text_config):
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision_model = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        widths = (text_config.hidden_size, *HEAD_WIDTHS)
        self.head = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.image_size = vision_config.image_size

    def features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's first-token hidden state, reading the image through cross-attention."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        return text.last_hidden_state[:, 0, :]

    def score_pixels(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reward of already preprocessed images (as ImageReward.score_gard), shape (B,)."""
        reward = self.head(self.features(pixel_values, input_ids, attention_mask)).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pixel_values = preprocess(images.float(), self.image_size)
        return self.score_pixels(pixel_values, input_ids.to(images.device), attention_mask.to(images.device))


def load_imagereward_checkpoint(checkpoint, med_config, vision: Mapping = VIT_LARGE) -> ImageRewardScorer:
    """An ImageRewardScorer (float32, eval mode) holding ``ImageReward.pt``'s weights.

    ``checkpoint``: the release's file (a bare state dict, as ``ImageReward.utils.load`` reads it);
    ``med_config``: its ``med_config.json``. The model is built without initialising its ~450M
    weights, then takes the converted ones; a missing or extra parameter is an error.
    """
    from accelerate import init_empty_weights

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    with init_empty_weights():
        scorer = ImageRewardScorer(*blip_configs(med_config, vision))
    converted = {k: v.float() for k, v in imagereward_to_transformers(state).items()}
    scorer.load_state_dict(converted, strict=True, assign=True)  # buffers (position ids) were built for real
    return scorer.eval()
