"""Reference outputs of the ImageReward release's own code for ``test_imagereward_port.py``, which
checks the conversion to transformers' BLIP classes (:mod:`nabla.models.imagereward`) against them
without timm, fairscale or torchvision.

A tiny ImageReward (the release's ``ImageReward`` class, its BLIP ViT and med.py BERT, shrunk)
gets seeded weights (``seeded.seeded_state``, shared with the test) and scores seeded images against
fixed token ids through ``ImageReward.score_gard``; the text encoder's first-token state (the
head's input), the ViT's output and the normalised scores go to ``imagereward_reference.json``
beside this file, with the key shapes of the full-size model the release builds.

The release's package ``__init__`` imports everything it ships (CLIP, diffusers, ReFL), so only
its BLIP modules and ``ImageReward.py`` are imported, from the unpacked wheel. Regenerate with::

    pip download image-reward==1.5 --no-deps && unzip image_reward-1.5-py3-none-any.whl -d src
    pip install torch torchvision timm==0.6.13 fairscale==0.4.13 "transformers<4.40"
    python tests/reference/imagereward_reference.py --source src/ImageReward

(its med.py imports helpers that transformers 5 no longer has; 4.36.2 was used). No network:
the tokenizer and hub files are not needed for the tiny model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

from seeded import seeded_state

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "imagereward_reference.json"
REFERENCE = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else None

#: the tiny ViT, in the release's VisionTransformer terms; its width differs from the text's so
#: that a cross-attention key/value of the wrong width cannot load
VISION = dict(image_size=32, patch_size=8, width=24, depth=2, heads=2, mlp_ratio=4.0)
#: BLIP's configs/med_config.json (485 bytes, the size of THUDM/ImageReward's med_config.json)
BLIP_MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524,
    "encoder_width": 768, "add_cross_attention": True,
}
#: the tiny BERT: BLIP's file, shrunk (its encoder_width is overridden with the ViT's width by
#: BLIP_Pretrain, as for the release)
MED_CONFIG = {**BLIP_MED_CONFIG, "hidden_size": 16, "intermediate_size": 48, "max_position_embeddings": 40,
              "num_attention_heads": 2, "num_hidden_layers": 2, "vocab_size": 100}
#: [CLS]-like first token, words, [SEP]-like end, zero padding (masked) up to a fixed length
TOKENS = [[1, 5, 17, 42, 2, 0, 0, 0, 0, 0], [1, 99, 23, 7, 64, 11, 30, 8, 2, 0]]
MASKS = [[int(t != 0) for t in row] for row in TOKENS]
#: a non-square size, so that the resize path (shorter side to 32, centre crop) does work
RESIZE_HW = (48, 40)


def seeded_images() -> torch.Tensor:
    return torch.rand(2, 3, VISION["image_size"], VISION["image_size"], generator=torch.Generator().manual_seed(7))


def seeded_large_images() -> torch.Tensor:
    return torch.rand(2, 3, *RESIZE_HW, generator=torch.Generator().manual_seed(8))


def import_release(source: Path):
    """The release's ImageReward.py and BLIP modules, without the package __init__ files."""
    for name, path in (("ImageReward", source), ("ImageReward.models", source / "models")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    import ImageReward.ImageReward as release
    from ImageReward.models.BLIP import blip_pretrain, vit

    return release, blip_pretrain, vit


def build(release, blip_pretrain, vit, med_config: dict, vision: dict | None):
    """The release's ImageReward; ``vision=None``: its own ViT-L and head, else a tiny ViT and a
    head on the tiny text width. Only the factories it calls are swapped, and the tokenizer (it
    downloads bert-base-uncased, and the scores take token ids)."""
    real_create_vit, real_mlp, real_tokenizer = blip_pretrain.create_vit, release.MLP, blip_pretrain.init_tokenizer
    blip_pretrain.init_tokenizer = lambda: None
    if vision is not None:
        def create_vit(*args, **kwargs):
            encoder = vit.VisionTransformer(
                img_size=vision["image_size"], patch_size=vision["patch_size"], embed_dim=vision["width"],
                depth=vision["depth"], num_heads=vision["heads"], mlp_ratio=vision["mlp_ratio"], drop_path_rate=0.1,
            )
            return encoder, vision["width"]

        blip_pretrain.create_vit = create_vit
        release.MLP = lambda input_size: real_mlp(med_config["hidden_size"])
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
            json.dump(med_config, file)
            file.flush()
            return release.ImageReward(med_config=file.name, device="cpu")
    finally:
        blip_pretrain.create_vit, release.MLP, blip_pretrain.init_tokenizer = real_create_vit, real_mlp, real_tokenizer


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=HERE / "src" / "ImageReward", help="the unpacked package")
    source = parser.parse_args().source.resolve()
    release, blip_pretrain, vit = import_release(source)

    import timm
    import torchvision
    import transformers
    from torchvision import transforms as T

    model = build(release, blip_pretrain, vit, MED_CONFIG, VISION).eval()
    own = model.state_dict()
    shapes = {k: list(v.shape) for k, v in own.items()}
    state = seeded_state(shapes)
    # integer buffers (the text position ids) keep their values: random floats are no ids
    state = {k: v if own[k].is_floating_point() else own[k] for k, v in state.items()}
    model.load_state_dict(state, strict=True)

    captured = {}
    model.mlp.register_forward_hook(lambda m, args, out: captured.__setitem__("features", args[0]))
    model.blip.visual_encoder.register_forward_hook(lambda m, args, out: captured.__setitem__("image_embeds", out))
    ids, masks = torch.tensor(TOKENS), torch.tensor(MASKS)

    # the release's normalisation on images already at the ViT's size
    normalize = release._transform(VISION["image_size"]).transforms[-1]
    assert isinstance(normalize, T.Normalize)
    scores = model.score_gard(ids, masks, normalize(seeded_images()))
    features, image_embeds = captured["features"], captured["image_embeds"]

    # ReFL's differentiable path on tensors in [0, 1]: resize the shorter side, centre crop, normalise
    refl = T.Compose([T.Resize(VISION["image_size"], interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(VISION["image_size"]), normalize])
    resized_pixels = refl(seeded_large_images())
    resized_scores = model.score_gard(ids, masks, resized_pixels)

    # the full-size model the release builds (~450M random weights, a minute): its key names and shapes
    full = build(release, blip_pretrain, vit, BLIP_MED_CONFIG, None)
    full_shapes = {k: list(v.shape) for k, v in full.state_dict().items()}

    out = {
        "image_reward_version": "1.5",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "transformers_version": transformers.__version__,
        "timm_version": timm.__version__,
        "vision": VISION,
        "med_config": MED_CONFIG,
        "tokens": TOKENS,
        "masks": MASKS,
        "reward_mean": model.mean,
        "reward_std": model.std,
        "shapes": shapes,
        "image_embeds": image_embeds.tolist(),
        "features": features.tolist(),
        "scores": scores.squeeze(-1).tolist(),
        "resized_pixels": resized_pixels.tolist(),
        "resized_scores": resized_scores.squeeze(-1).tolist(),
        "full_med_config": BLIP_MED_CONFIG,
        "full_shapes": full_shapes,
    }
    OUTPUT.write_text(json.dumps(out) + "\n")
    print(f"wrote {OUTPUT}: scores {out['scores']}, resized {out['resized_scores']}, {len(full_shapes)} full-size keys")


if __name__ == "__main__":
    main()
