"""open_clip CLIP checkpoints as transformers CLIPModel state dicts.

HPSv2 publishes its weights as an open_clip state dict. transformers' CLIPModel computes the same
network: pre-LayerNorm transformers, the image pooled at the class token, the text pooled at its
end-of-text token, then a linear projection. Only the parameter layout differs. open_clip fuses
attention's q, k, v input projections into one matrix and stores both output projections as
(width, dim) matrices applied as ``x @ P``, where nn.Linear stores Pᵀ. Converting lets those
rewards run on transformers alone; the open_clip package needs torchvision, which this project
does not depend on.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from nabla.models.checkpoints import unplaced_keys_error

#: one-to-one renames, open_clip → transformers
RENAMES = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # transformers' spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
#: projections applied as x @ P in open_clip: nn.Linear's weight is Pᵀ
TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
#: the text transformer's causal mask, which transformers builds itself
DROPPED = {"attn_mask"}
#: parts of one residual attention block
BLOCK_PARTS = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
#: ``[visual.]transformer.resblocks.N.PART.weight``, or ``…attn.in_proj_weight`` (nn.MultiheadAttention's naming)
BLOCK = re.compile(r"^(?P<tower>visual\.)?transformer\.resblocks\.(?P<index>\d+)\.(?P<part>.+?)[._](?P<kind>weight|bias)$")


def _block_entries(match: re.Match, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    tower = "vision_model" if match["tower"] else "text_model"
    prefix = f"{tower}.encoder.layers.{match['index']}."
    part, kind = match["part"], match["kind"]
    if part == "attn.in_proj":  # fused [q; k; v] along the output dimension
        q, k, v = value.chunk(3, dim=0)
        return {f"{prefix}self_attn.{name}_proj.{kind}": t for name, t in zip("qkv", (q, k, v))}
    if part in BLOCK_PARTS:
        return {f"{prefix}{BLOCK_PARTS[part]}.{kind}": value}
    return None


def open_clip_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip ViT CLIP state dict (``model.state_dict()``) → transformers CLIPModel keys.

    Raises ValueError naming every key it does not know (e.g. LayerScale or attention pooling,
    which CLIPModel has no place for), rather than loading a different network silently.
    """
    converted, unknown = {}, []
    for key, value in state.items():
        if key in DROPPED:
            continue
        if key in RENAMES:
            converted[RENAMES[key]] = value
        elif key in TRANSPOSED:
            converted[TRANSPOSED[key]] = value.t().contiguous()
        elif (match := BLOCK.match(key)) and (entries := _block_entries(match, value)) is not None:
            converted.update(entries)
        else:
            unknown.append(key)
    if unknown:
        raise unplaced_keys_error(unknown, "the open_clip checkpoint", "a transformers CLIPModel")
    return converted


def load_open_clip_checkpoint(checkpoint, config_dir):
    """A transformers CLIPModel (float32, eval mode) holding an open_clip checkpoint's weights.

    ``checkpoint``: a ``.pt`` file holding the state dict, bare or under ``"state_dict"`` (as
    HPSv2's); ``config_dir``: a folder with the matching transformers ``config.json`` (for HPSv2,
    that of its base model). The model is built without initialising its weights, then takes the
    converted ones; a missing or extra parameter is an error.
    """
    from accelerate import init_empty_weights
    from transformers import CLIPConfig, CLIPModel

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    with init_empty_weights():  # a ViT-H/14 CLIP has ~1B parameters: skip their random init
        clip = CLIPModel(CLIPConfig.from_pretrained(str(config_dir), local_files_only=True))
    converted = {k: v.float() for k, v in open_clip_to_transformers(state).items()}
    clip.load_state_dict(converted, strict=True, assign=True)
    return clip.eval()
