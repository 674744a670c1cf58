"""Reference outputs of open_clip itself for ``tests/test_hpsv2.py``, which checks the conversion of
open_clip checkpoints (:mod:`nabla.models.open_clip`) against them without open_clip installed.

A tiny open_clip ViT CLIP gets seeded weights (``seeded.seeded_state``, shared with the test) and encodes
seeded images and fixed token ids; its features and HPSv2-style scores go to
``open_clip_reference.json`` beside this file. Regenerate in an environment with open_clip (it needs
torchvision): ``pip install open_clip_torch && python tests/reference/open_clip_reference.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from seeded import seeded_state

#: the tiny model, in open_clip's config terms (gelu, as ViT-H/14; 2 heads of width 8)
VISION = dict(image_size=32, patch_size=8, width=16, layers=2, head_width=8, mlp_ratio=2.0)
TEXT = dict(context_length=8, vocab_size=128, width=16, heads=2, layers=2)
EMBED_DIM = 12
#: start, three words, end-of-text (the highest id: open_clip pools at the argmax), zero padding
TOKENS = [[126, 5, 17, 42, 127, 0, 0, 0], [126, 99, 127, 0, 0, 0, 0, 0]]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: what main() wrote: the reference's key shapes and outputs
OUTPUT = Path(__file__).with_name("open_clip_reference.json")
REFERENCE = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else None


def seeded_images() -> torch.Tensor:
    return torch.rand(2, 3, VISION["image_size"], VISION["image_size"], generator=torch.Generator().manual_seed(7))


def tiny_config(eos_token_id: int, bos_token_id: int | None = None):
    """The transformers CLIPConfig of the same tiny model (eos 2: pool at the argmax id, as open_clip)."""
    from transformers import CLIPConfig

    heads = VISION["width"] // VISION["head_width"]
    return CLIPConfig(
        vision_config=dict(hidden_size=VISION["width"], intermediate_size=int(VISION["width"] * VISION["mlp_ratio"]),
                           num_hidden_layers=VISION["layers"], num_attention_heads=heads, image_size=VISION["image_size"],
                           patch_size=VISION["patch_size"], hidden_act="gelu"),
        text_config=dict(hidden_size=TEXT["width"], intermediate_size=4 * TEXT["width"], num_hidden_layers=TEXT["layers"],
                         num_attention_heads=TEXT["heads"], vocab_size=TEXT["vocab_size"],
                         max_position_embeddings=TEXT["context_length"], hidden_act="gelu", eos_token_id=eos_token_id,
                         bos_token_id=bos_token_id, pad_token_id=eos_token_id),
        projection_dim=EMBED_DIM,
    )


@torch.no_grad()
def main() -> None:
    import open_clip

    model = open_clip.model.CLIP(EMBED_DIM, vision_cfg=VISION, text_cfg=TEXT, quick_gelu=False).eval()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state(shapes))

    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    images = seeded_images()
    image_features = model.encode_image((images - mean) / std)
    text_features = model.encode_text(torch.tensor(TOKENS))
    # HPSv2's score: the diagonal of normalised image · text features, without the logit scale
    score = torch.nn.functional.normalize(image_features, dim=-1) @ torch.nn.functional.normalize(text_features, dim=-1).T
    out = {
        "open_clip_version": open_clip.__version__,
        "torch_version": torch.__version__,
        "shapes": shapes,
        "image_features": image_features.tolist(),
        "text_features": text_features.tolist(),
        "hps_scores": score.diagonal().tolist(),
    }
    OUTPUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
