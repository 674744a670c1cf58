"""DreamSim (Fu et al., NeurIPS 2023) image embeddings on transformers' ViT and CLIP vision classes.

DreamSim's default model (``dreamsim_type="ensemble"``, package ``dreamsim`` 0.2.1) concatenates
three ViT-B/16 features of a 224×224 image, each normalised with its backbone's mean/std:

- DINO ViT-B/16: the class token at the output of block 11, *before* the final LayerNorm
  (a forward hook on ``blocks[11]``), 768-d; DINO's projection head is not used;
- OpenAI CLIP ViT-B/16 and OpenCLIP ViT-B/16 (LAION-400M): the projected image embedding,
  ``ln_post(class token) @ proj``, 512-d each.

The 1792-d concatenation is centred (its own mean subtracted) and L2-normalised; the distance is
1 − cos between two embeddings. Every backbone was fine-tuned with LoRA on the attention's fused
qkv matrix (peft, ``target_modules=["qkv"]``), whose adapter the release ships apart from the
base weights.

The package loads all three backbones into DINO's ``VisionTransformer`` class: the CLIP towers'
weights are stored already re-keyed for it (pos_drop: the LayerNorm ``ln_pre``, norm: ``ln_post``,
``proj`` beside them), with the LayerNorm eps set to 1e-5 and, for OpenAI's CLIP only, QuickGELU;
OpenCLIP keeps the exact GELU. Those files are not open_clip state dicts, so
``nabla.models.open_clip.open_clip_to_transformers`` does not apply; one converter serves both
CLIP branches. Merging each LoRA update (W + alpha/r · B·A) into the fused qkv weight before the
split into q, k, v lets the embedding run on transformers alone (no dreamsim, timm, open_clip,
torchvision or peft).

Files: the release zip (``dreamsim_ensemble_checkpoint.zip``: ``clip_vitb16_pretrain.pth.tar``,
``open_clip_vitb16_pretrain.pth.tar``, ``ensemble_lora/adapter_config.json`` and
``adapter_model.*``; its ``dino_vitb16_pretrain.pth`` holds only the unused DINO head as far as
DreamSim reads it) and DINO's own ViT-B/16 weights (``dino_vitbase16_pretrain.pth``), which the
package fetches through ``torch.hub``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from nabla.hub import UrlModel
from nabla.models.checkpoints import unplaced_keys_error
from nabla.models.clip import CLIP_MEAN, CLIP_STD, resize_bicubic

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the release's Resize((224, 224), BICUBIC) (config.py: img_size)
IMAGE_SIZE = 224
#: model.py's _extract_cls_and_patch hooks this block index, whatever the depth
DINO_BLOCK = 11

RELEASES = {
    variant: UrlModel(f"https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/"
                      f"dreamsim_{variant}_checkpoint.zip", purpose=f"DreamSim {variant}: CLIP towers and LoRA adapters")
    for variant in ("ensemble", "dino_vitb16", "clip_vitb32", "open_clip_vitb32")
}
DINO_VITB16 = UrlModel("https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                       purpose="DreamSim: DINO ViT-B/16 backbone (torch.hub facebookresearch/dino)")


# -- facts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Branch:
    """One backbone as DreamSim reads it."""

    kind: str  # "dino": ViTModel, class token after block 11; "clip": CLIPVisionModelWithProjection
    patch_size: int
    hidden_act: str  # "gelu" is the exact (erf) GELU
    layer_norm_eps: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    file: str | None  # its weights in the release zip (None: DINO's hub file)


BRANCHES = {
    "dino_vitb16": Branch("dino", 16, "gelu", 1e-6, IMAGENET_MEAN, IMAGENET_STD, None),
    "clip_vitb16": Branch("clip", 16, "quick_gelu", 1e-5, CLIP_MEAN, CLIP_STD, "clip_vitb16_pretrain.pth.tar"),
    "open_clip_vitb16": Branch("clip", 16, "gelu", 1e-5, CLIP_MEAN, CLIP_STD, "open_clip_vitb16_pretrain.pth.tar"),
    "clip_vitb32": Branch("clip", 32, "quick_gelu", 1e-5, CLIP_MEAN, CLIP_STD, "clip_vitb32_pretrain.pth.tar"),
    "open_clip_vitb32": Branch("clip", 32, "gelu", 1e-5, CLIP_MEAN, CLIP_STD, "open_clip_vitb32_pretrain.pth.tar"),
}
#: dreamsim_type → (branches in concatenation order, adapter folder in the zip)
VARIANTS = {
    "ensemble": (("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), "ensemble_lora"),
    "dino_vitb16": (("dino_vitb16",), "dino_vitb16_single_lora"),
    "clip_vitb32": (("clip_vitb32",), "clip_vitb32_single_lora"),
    "open_clip_vitb32": (("open_clip_vitb32",), "open_clip_vitb32_single_lora"),
}
#: ViT-B (DINO's vit_base): every branch's shape; proj_dim: the CLIP towers' embedding width
VIT_BASE = dict(width=768, depth=12, heads=12, proj_dim=512)
MLP_RATIO = 4  # vit_base's, for every branch


# -- configs -------------------------------------------------------------------------------------
def branch_config(name: str, shape: Mapping = VIT_BASE, image_size: int = IMAGE_SIZE):
    """The transformers config of one branch (``shape``: VIT_BASE for the release)."""
    from transformers import CLIPVisionConfig, ViTConfig

    branch = BRANCHES[name]
    common = dict(hidden_size=shape["width"], num_hidden_layers=shape["depth"], num_attention_heads=shape["heads"],
                  intermediate_size=shape["width"] * MLP_RATIO, image_size=image_size,
                  patch_size=branch.patch_size, hidden_act=branch.hidden_act, layer_norm_eps=branch.layer_norm_eps)
    if branch.kind == "dino":
        return ViTConfig(**common, qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return CLIPVisionConfig(**common, projection_dim=shape["proj_dim"], attention_dropout=0.0)


# -- state-dict conversion -----------------------------------------------------------------------
#: DINO's VisionTransformer → ViTModel (transformers 5 names), outside the blocks
DINO_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",  # computed, unused by the feature (taken before it)
    "norm.bias": "layernorm.bias",
}
DINO_BLOCK_PARTS = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
                    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
#: the CLIP-as-DINO files → CLIPVisionModelWithProjection, outside the blocks (cls_token, pos_embed,
#: the patch bias and proj are reshaped, see below)
CLIP_RENAMES = {
    "patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "pos_drop.weight": "vision_model.pre_layrnorm.weight",
    "pos_drop.bias": "vision_model.pre_layrnorm.bias",
    "norm.weight": "vision_model.post_layernorm.weight",
    "norm.bias": "vision_model.post_layernorm.bias",
}
CLIP_BLOCK_PARTS = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
                    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


def _blocks(state: Mapping[str, torch.Tensor], prefix: str, parts: Mapping[str, str], qkv: str,
            converted: dict, unknown: list) -> None:
    """The transformer blocks: renamed parts, and the fused [q; k; v] rows split in that order."""
    for key, value in state.items():
        if not (m := BLOCK.match(key)):
            continue
        layer, part, kind = m.groups()
        if part == "attn.qkv":
            for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                converted[f"{prefix}{layer}.{qkv}.{name}_proj.{kind}"] = chunk
        elif part in parts:
            converted[f"{prefix}{layer}.{parts[part]}.{kind}"] = value
        else:
            unknown.append(key)


def dino_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINO's ViT state dict (``dino_vitbase16_pretrain.pth``) → transformers ViTModel keys
    (no pooler). Raises ValueError naming every key it does not know."""
    converted, unknown = {}, []
    _blocks(state, "layers.", DINO_BLOCK_PARTS, "attention", converted, unknown)
    for key, value in state.items():
        if key in DINO_RENAMES:
            converted[DINO_RENAMES[key]] = value
        elif not BLOCK.match(key):
            unknown.append(key)
    if unknown:
        raise unplaced_keys_error(unknown, "the DINO checkpoint")
    return converted


def clip_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIP-as-DINO file's ``state_dict`` (``clip_vitb16_pretrain.pth.tar`` and the OpenCLIP
    ones) → transformers CLIPVisionModelWithProjection keys. Raises ValueError naming every key
    it does not know.

    DINO's patch convolution has a bias and CLIP's has none: the bias is added to every patch
    token and to no class token, so it moves into the patch positions' embeddings exactly.
    """
    converted, unknown = {}, []
    _blocks(state, "vision_model.encoder.layers.", CLIP_BLOCK_PARTS, "self_attn", converted, unknown)
    for key, value in state.items():
        if key in CLIP_RENAMES:
            converted[CLIP_RENAMES[key]] = value
        elif key not in {"cls_token", "pos_embed", "patch_embed.proj.bias", "proj"} and not BLOCK.match(key):
            unknown.append(key)
    missing = [k for k in ("cls_token", "pos_embed", "proj") if k not in state]
    if unknown or missing:
        raise unplaced_keys_error(unknown, "the CLIP-as-DINO checkpoint") if unknown else ValueError(
            f"the CLIP-as-DINO checkpoint lacks {', '.join(missing)}")
    positions = state["pos_embed"].reshape(-1, state["pos_embed"].shape[-1]).clone()
    if "patch_embed.proj.bias" in state:
        positions[1:] += state["patch_embed.proj.bias"]
    converted["vision_model.embeddings.class_embedding"] = state["cls_token"].reshape(-1)
    converted["vision_model.embeddings.position_embedding.weight"] = positions
    converted["visual_projection.weight"] = state["proj"].t().contiguous()  # applied as x @ proj
    return converted


# -- LoRA ----------------------------------------------------------------------------------------
#: peft's saved names: base_model.model.extractor_list.{branch}.model.{module}.lora_{A,B}.weight
ADAPTER_KEY = re.compile(r"^base_model\.model\.extractor_list\.(\d+)\.model\.(.+)\.lora_([AB])\.weight$")


def lora_scaling(adapter_config: Mapping) -> float:
    """alpha / r, as peft's LoraConfig built from the five keys model.py passes (r, lora_alpha,
    lora_dropout, bias, target_modules): rsLoRA, DoRA and the rest stay at peft's defaults."""
    if adapter_config.get("bias", "none") != "none":
        raise ValueError(f"adapter bias={adapter_config['bias']!r}: trained biases are not merged by this port")
    return float(adapter_config["lora_alpha"]) / float(adapter_config["r"])


def split_adapter(adapter: Mapping[str, torch.Tensor], branches: int) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The adapter file's tensors → per branch, {base weight key: (A, B)}. Raises ValueError naming
    keys it cannot place (another module layout, or a branch the variant lacks) and lone A or B."""
    pairs: list[dict[str, dict[str, torch.Tensor]]] = [{} for _ in range(branches)]
    unknown = []
    for key, value in adapter.items():
        m = ADAPTER_KEY.match(key)
        if m is None or int(m[1]) >= branches:
            unknown.append(key)
            continue
        pairs[int(m[1])].setdefault(f"{m[2]}.weight", {})[m[3]] = value
    if unknown:
        raise unplaced_keys_error(unknown, "the LoRA adapter")
    lone = [f"{i}:{k}" for i, branch in enumerate(pairs) for k, ab in branch.items() if len(ab) != 2]
    if lone:
        raise ValueError(f"LoRA A without B or B without A: {', '.join(lone[:8])}")
    return [{k: (ab["A"], ab["B"]) for k, ab in branch.items()} for branch in pairs]


def merge_lora(state: Mapping[str, torch.Tensor], lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               scaling: float) -> dict[str, torch.Tensor]:
    """``state`` with W + scaling · B·A for every {weight key: (A, B)} (A: r × in, B: out × r);
    a new dict, the input untouched. ValueError for a key the state lacks."""
    missing = [k for k in lora if k not in state]
    if missing:
        raise ValueError(f"LoRA for weights the checkpoint lacks: {', '.join(missing[:8])}")
    merged = dict(state)
    for key, (a, b) in lora.items():
        base = state[key]
        merged[key] = (base.double() + scaling * (b.double() @ a.double())).to(base.dtype)
    return merged


# -- the embedding -------------------------------------------------------------------------------
class DreamSimEmbedding(nn.Module):
    """DreamSim's embedding (``model.embed``, normalize_embeds=True): images (B, 3, H, W) in [0, 1]
    → (B, D) centred, unit-norm, float32; distance = 1 − cos. ``branches``: names in BRANCHES,
    in concatenation order; ``shape``: VIT_BASE, or per-branch shapes (tests)."""

    def __init__(self, branches: Sequence[str], shape: Mapping | Sequence[Mapping] = VIT_BASE,
                 image_size: int = IMAGE_SIZE):
        from transformers import CLIPVisionModelWithProjection, ViTModel

        super().__init__()
        shapes = [shape] * len(branches) if isinstance(shape, Mapping) else list(shape)
        self.branches = tuple(branches)
        self.image_size = image_size
        self.backbones = nn.ModuleList()
        for index, (name, branch_shape) in enumerate(zip(self.branches, shapes)):
            config = branch_config(name, branch_shape, image_size)
            if BRANCHES[name].kind == "dino":
                self.backbones.append(ViTModel(config, add_pooling_layer=False))
            else:
                self.backbones.append(CLIPVisionModelWithProjection(config))
            # constants, not weights: kept out of the state dict so conversions load strictly
            self.register_buffer(f"mean{index}", torch.tensor(BRANCHES[name].mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{index}", torch.tensor(BRANCHES[name].std).view(1, 3, 1, 1), persistent=False)

    def branch_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each branch's feature before concatenation, for images already at image_size."""
        features = []
        for index, (name, backbone) in enumerate(zip(self.branches, self.backbones)):
            pixels = (images - getattr(self, f"mean{index}")) / getattr(self, f"std{index}")
            if BRANCHES[name].kind == "dino":
                hidden = backbone(pixel_values=pixels, output_hidden_states=True).hidden_states
                features.append(hidden[DINO_BLOCK + 1][:, 0])  # [0] is the embedding output
            else:
                features.append(backbone(pixel_values=pixels).image_embeds)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the release's Resize((224, 224), BICUBIC): square, aspect not kept
        embedding = torch.cat(self.branch_features(resize_bicubic(images.float(), self.image_size)), dim=-1)
        embedding = embedding - embedding.mean(dim=-1, keepdim=True)
        return embedding / embedding.norm(dim=-1, keepdim=True)


def dreamsim_to_transformers(backbones: Mapping[str, Mapping[str, torch.Tensor]], adapter: Mapping[str, torch.Tensor],
                             adapter_config: Mapping, variant: str = "ensemble") -> dict[str, torch.Tensor]:
    """The release's weights → DreamSimEmbedding's state dict: ``backbones`` maps each branch name
    to its state dict (DINO's hub file; a CLIP file's ``state_dict``), ``adapter`` is the adapter
    file's tensors; LoRA is merged into the fused qkv weights, then each branch converted."""
    names = VARIANTS[variant][0]
    scaling = lora_scaling(adapter_config)
    converted = {}
    for index, (name, lora) in enumerate(zip(names, split_adapter(adapter, len(names)))):
        merged = merge_lora(backbones[name], lora, scaling)
        convert = dino_to_transformers if BRANCHES[name].kind == "dino" else clip_to_transformers
        converted.update({f"backbones.{index}.{k}": v for k, v in convert(merged).items()})
    return converted


# -- the release's files -------------------------------------------------------------------------
class _Release:
    """Members of the release, from its zip or the folder it unzips to, found by path suffix."""

    def __init__(self, path):
        self.path = Path(path)
        self.zip = zipfile.ZipFile(self.path) if self.path.is_file() else None

    def find(self, suffix: str) -> str | None:
        names = self.zip.namelist() if self.zip else [str(p.relative_to(self.path)) for p in self.path.rglob("*")]
        hits = [n for n in names if n == suffix or n.endswith("/" + suffix)]
        return min(hits, key=len) if hits else None

    def read(self, suffix: str) -> bytes:
        name = self.find(suffix)
        if name is None:
            raise FileNotFoundError(f"{self.path}: no {suffix}")
        return self.zip.read(name) if self.zip else (self.path / name).read_bytes()


def _torch_load(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_dreamsim(release, dino=None, variant: str = "ensemble", shape: Mapping | Sequence[Mapping] = VIT_BASE,
                  image_size: int = IMAGE_SIZE) -> DreamSimEmbedding:
    """A DreamSimEmbedding (float32, eval mode) from the release zip of ``variant`` (or its unzipped
    folder) and, for variants with DINO, DINO's ``dino_vitbase16_pretrain.pth``. Built without
    initialising its ~260M weights; a missing or extra parameter is an error. ``shape`` and
    ``image_size`` are the release's unless testing."""
    from accelerate import init_empty_weights
    from safetensors.torch import load as load_safetensors

    names, adapter_dir = VARIANTS[variant]
    files = _Release(release)
    backbones = {}
    for name in names:
        if BRANCHES[name].file is None:
            if dino is None:
                raise ValueError(f"DreamSim {variant} needs DINO's ViT-B/16 weights ({DINO_VITB16.url})")
            backbones[name] = torch.load(dino, map_location="cpu", weights_only=True)
        else:
            checkpoint = _torch_load(files.read(BRANCHES[name].file))
            backbones[name] = checkpoint.get("state_dict", checkpoint)
    adapter_config = json.loads(files.read(f"{adapter_dir}/adapter_config.json"))
    if files.find(f"{adapter_dir}/adapter_model.safetensors"):  # peft prefers it, as here
        adapter = load_safetensors(files.read(f"{adapter_dir}/adapter_model.safetensors"))
    else:
        adapter = _torch_load(files.read(f"{adapter_dir}/adapter_model.bin"))
    converted = {k: v.float() for k, v in dreamsim_to_transformers(backbones, adapter, adapter_config, variant).items()}
    with init_empty_weights():
        model = DreamSimEmbedding(names, shape, image_size)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()
