"""Reference outputs of the dreamsim package's own code for ``tests/test_dreamsim.py``, which checks the
conversion to transformers' ViT and CLIP vision classes (:mod:`nabla.models.dreamsim`) against them without
dreamsim, timm, open_clip, torchvision or peft.

The package's ``dreamsim(pretrained=True)`` runs for real on a folder laid out as its unzipped
release (``clip_vitb16_pretrain.pth.tar`` …, ``ensemble_lora/adapter_model.safetensors`` under the
key names peft's ``get_peft_model_state_dict`` gives, as ``save_pretrained`` writes them), holding
tiny backbones with seeded weights (``seeded.seeded_state``, shared
with the test), LoRA B matrices included (nonzero, so the merge is tested). Only the factories that
fix ViT-B shapes or need the network are swapped: ``torch.hub.load`` (DINO's code and weights come
from GitHub and dl.fbaipublicfiles.com; the stand-in builds the same class, the package's copy of
DINO's ``vision_transformer.py``, shrunk, and loads the seeded DINO weights strictly, as DINO's
hubconf does) and ``vit_base`` inside ``load_clip_as_dino`` / ``load_open_clip_as_dino``. Patch
sizes stay those of the release (16, 32), as ``patch_vit_resolution`` would otherwise change the
stride; the DINO branch keeps 12 blocks, as its feature is hooked at block index 11.

Embeddings (``model.embed``), per-branch features, the model's own pairwise distances, and the
key shapes go to ``dreamsim_reference.json`` beside this file. Regenerate with::

    python3 -m venv /tmp/dsvenv && /tmp/dsvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 dreamsim==0.2.1
    /tmp/dsvenv/bin/python tests/reference/dreamsim_reference.py

No network is used.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from seeded import seeded_state

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dreamsim_reference.json"
REFERENCE = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else None

#: tiny backbones, in the terms of DINO's VisionTransformer (the class every branch is loaded into);
#: widths differ between branches so that weights of the wrong branch cannot load
BACKBONES = {
    "dino_vitb16": dict(image_size=48, patch_size=16, width=24, depth=12, heads=2),
    "clip_vitb16": dict(image_size=48, patch_size=16, width=16, depth=2, heads=2, proj_dim=12),
    "open_clip_vitb16": dict(image_size=48, patch_size=16, width=20, depth=3, heads=2, proj_dim=10),
    "clip_vitb32": dict(image_size=64, patch_size=32, width=16, depth=2, heads=2, proj_dim=12),
    "open_clip_vitb32": dict(image_size=64, patch_size=32, width=20, depth=2, heads=2, proj_dim=10),
}
#: the variants run (``dreamsim_type``), their branches (config.py) and the tiny image size
VARIANTS = {
    "ensemble": (("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), 48),
    "dino_vitb16": (("dino_vitb16",), 48),
    "open_clip_vitb32": (("open_clip_vitb32",), 64),
    "clip_vitb32": (("clip_vitb32",), 64),
}
#: the adapter config written beside the tiny adapters; alpha / r = 0.75 (the training config's
#: 0.5 / 16 would shrink the LoRA term below what the tolerance can tell apart at these weights)
LORA = dict(r=4, lora_alpha=3.0, lora_dropout=0.3, bias="none", target_modules=["qkv"])
#: the release's file names in its unzipped folder (model.py, download_weights)
FILES = {
    "clip_vitb16": "clip_vitb16_pretrain.pth.tar", "open_clip_vitb16": "open_clip_vitb16_pretrain.pth.tar",
    "clip_vitb32": "clip_vitb32_pretrain.pth.tar", "open_clip_vitb32": "open_clip_vitb32_pretrain.pth.tar",
}
ADAPTER_DIRS = {"ensemble": "ensemble_lora", "dino_vitb16": "dino_vitb16_single_lora",
                "open_clip_vitb32": "open_clip_vitb32_single_lora", "clip_vitb32": "clip_vitb32_single_lora"}
#: the DINO head shape stand-in (model.py reads the head from the zip's dino_vitb16_pretrain.pth
#: for every variant with dino_vitb16; no released feature uses it)
DINO_HEAD = {"mlp.0.weight": [32, 24], "mlp.0.bias": [32], "mlp.2.weight": [32, 32], "mlp.2.bias": [32],
             "mlp.4.weight": [8, 32], "mlp.4.bias": [8], "last_layer.weight": [16, 8]}
#: a non-square size for the resize path (squashed to the model's square size, as the release's Resize((s, s)))
LARGE_HW = (80, 56)


def _colour_noise(n: int, hw: tuple[int, int], seed: int) -> torch.Tensor:
    """A colour per image plus noise: far enough apart that distances are not all near zero."""
    generator = torch.Generator().manual_seed(seed)
    return 0.6 * torch.rand(n, 3, 1, 1, generator=generator) + 0.4 * torch.rand(n, 3, *hw, generator=generator)


def seeded_images(size: int, n: int = 3) -> torch.Tensor:
    return _colour_noise(n, (size, size), 7)


def seeded_large_images(n: int = 2) -> torch.Tensor:
    return _colour_noise(n, LARGE_HW, 8)


def seeded_uint8_image(size: int) -> torch.Tensor:
    """One (3, H, W) uint8 image at 1.5× the model size: the release's PIL path downsizes it."""
    side = size * 3 // 2
    return torch.randint(0, 256, (3, side, side), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)


def split_groups(state: dict) -> dict[str, dict]:
    """``"GROUP/key"`` entries → {GROUP: {key: tensor}} (the JSON's shapes keep one order for seeding)."""
    groups: dict[str, dict] = {}
    for name, value in state.items():
        group, _, key = name.partition("/")
        groups.setdefault(group, {})[key] = value
    return groups


# -- the release's code with tiny backbones ------------------------------------------------------
def tiny_vit(vision_transformer, shape: dict):
    """DINO's ViT-B constructor (vit_base: qkv bias, mlp ratio 4, LayerNorm eps 1e-6), shrunk."""
    return vision_transformer.VisionTransformer(
        img_size=[shape["image_size"]], patch_size=shape["patch_size"], embed_dim=shape["width"],
        depth=shape["depth"], num_heads=shape["heads"], mlp_ratio=4, qkv_bias=True, num_classes=0,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    )


@contextmanager
def tiny_factories(dino_state: dict | None, image_size: int):
    """Swap the package's ViT-B factories for tiny ones; ``dino_state``: the weights the DINO hub
    stand-in loads (None: keep its random init, to read key names only)."""
    import dreamsim.model as model_module
    from dreamsim.feature_extraction import load_clip_as_dino, load_open_clip_as_dino, vision_transformer

    def fake_vit_base(prefix):
        def build(patch_size=16, **kwargs):
            return tiny_vit(vision_transformer, BACKBONES[f"{prefix}_vitb{patch_size}"])
        return build

    def hub_load(repo, name, *args, **kwargs):
        assert (repo, name) == ("facebookresearch/dino:main", "dino_vitb16"), (repo, name)
        model = tiny_vit(vision_transformer, BACKBONES["dino_vitb16"])
        if dino_state is not None:
            model.load_state_dict(dino_state, strict=True)  # as DINO's hubconf loads its URL
        return model

    saved = (torch.hub.load, load_clip_as_dino.vit_base, load_open_clip_as_dino.vit_base,
             model_module.dreamsim_args["img_size"])
    torch.hub.load = hub_load
    load_clip_as_dino.vit_base = fake_vit_base("clip")
    load_open_clip_as_dino.vit_base = fake_vit_base("open_clip")
    model_module.dreamsim_args["img_size"] = image_size  # the PIL preprocess' Resize((s, s))
    try:
        yield
    finally:
        (torch.hub.load, load_clip_as_dino.vit_base, load_open_clip_as_dino.vit_base,
         model_module.dreamsim_args["img_size"]) = saved


def backbone_shapes() -> dict[str, list[int]]:
    """The tiny release files' keys: DINO's hub state dict, each CLIP file's ``state_dict``
    (pos_drop is the LayerNorm the loaders install in place of dropout, proj the projection)."""
    from dreamsim.feature_extraction import vision_transformer

    shapes = {}
    for name, shape in BACKBONES.items():
        vit = tiny_vit(vision_transformer, shape)
        if name != "dino_vitb16":
            vit.pos_drop = torch.nn.LayerNorm(shape["width"])
        state = {k: list(v.shape) for k, v in vit.state_dict().items()}
        if name != "dino_vitb16":
            state["proj"] = [shape["width"], shape["proj_dim"]]
        shapes.update({f"{name}/{k}": v for k, v in state.items()})
    return shapes


def adapter_shapes(folder: Path, variant: str) -> dict[str, list[int]]:
    """The key names and shapes peft saves for this variant's LoRA (built as model.py builds it)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel

    with tiny_factories(None, VARIANTS[variant][1]):
        model = PerceptualModel(**dreamsim_args["model_config"][variant], device="cpu", load_dir=str(folder))
    model = get_peft_model(model, LoraConfig(**LORA))
    return {f"lora-{variant}/{k}": list(v.shape) for k, v in get_peft_model_state_dict(model).items()}


def write_backbones(folder: Path, groups: dict[str, dict]) -> None:
    """The unzipped release's backbone files and the DINO head file."""
    for name, file in FILES.items():
        torch.save({"state_dict": groups[name]}, folder / file)
    head = seeded_state(DINO_HEAD)
    torch.save({"student": {f"module.head.{k}": v for k, v in head.items()}}, folder / "dino_vitb16_pretrain.pth")


def write_adapters(folder: Path, groups: dict[str, dict]) -> None:
    """One adapter folder per variant, as the release's ``*_lora`` folders."""
    import safetensors.torch

    for variant, directory in ADAPTER_DIRS.items():
        (folder / directory).mkdir()
        # the adapter_config.json keys model.py reads (peft writes many more; these are the ones used)
        (folder / directory / "adapter_config.json").write_text(json.dumps({**LORA, "peft_type": "LORA"}))
        safetensors.torch.save_file(groups[f"lora-{variant}"], str(folder / directory / "adapter_model.safetensors"))


def run_variant(folder: Path, variant: str, groups: dict[str, dict]) -> dict:
    from PIL import Image
    from torchvision import transforms as T
    from dreamsim import dreamsim

    branches, size = VARIANTS[variant]
    with tiny_factories(groups["dino_vitb16"], size):
        model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(folder), dreamsim_type=variant)
    # the adapter the package loaded is the file's: every LoRA B is the seeded one
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    expected = {k.replace(".weight", ".default.weight"): v for k, v in groups[f"lora-{variant}"].items() if "lora_B" in k}
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in loaded), variant
    assert model.base_model.model.normalize_embeds and all(b.abs().sum() > 0 for b in loaded.values())
    inner = model.base_model.model  # PerceptualModel

    images = seeded_images(size)
    embeddings = model.embed(images)
    features = [inner.extract_feats_list[i](images, extractor_index=i).squeeze() for i in range(len(branches))]
    pairs = [(0, 1), (0, 2), (1, 2)]
    distances = [model(images[i:i + 1], images[j:j + 1]).item() for i, j in pairs]

    # the release's Resize((s, s), BICUBIC) on tensors (torchvision: antialiased, like PIL's)
    resize = T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)
    resized_embeddings = model.embed(resize(seeded_large_images()))
    # its PIL path as dreamsim() returns it: uint8 image → bicubic resize → ToTensor
    pil = Image.fromarray(seeded_uint8_image(size).permute(1, 2, 0).numpy())
    pil_embedding = model.embed(preprocess(pil))
    return {
        "branches": list(branches), "image_size": size,
        "embeddings": embeddings, "features": features, "pairs": pairs, "distances": distances,
        "resized_embeddings": resized_embeddings, "pil_embedding": pil_embedding,
    }


def full_size_shapes() -> dict[str, dict[str, list[int]]]:
    """The ViT-B/16 layouts the release's files fill (vit_base(16), ~86M random weights): DINO's hub
    state dict, and the CLIP-as-DINO files' extra keys (pos_drop LayerNorm, proj (768, 512))."""
    from dreamsim.feature_extraction.vision_transformer import vit_base
    from dreamsim.model import EMBED_DIMS

    vit = vit_base(patch_size=16, num_classes=0)
    base = {k: list(v.shape) for k, v in vit.state_dict().items()}
    extra = {"pos_drop.weight": [768], "pos_drop.bias": [768], "proj": [768, EMBED_DIMS["clip_vitb16"]["embedding"]]}
    eps = {type(m).__name__ + str(m.eps) for m in vit.modules() if isinstance(m, torch.nn.LayerNorm)}
    return {"vit_base16": base, "clip_extra": extra, "vit_base16_layer_norms": sorted(eps)}


def rounded(value, digits: int = 8):
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return round(value, digits) if isinstance(value, float) else value


@torch.no_grad()
def main() -> None:
    import dreamsim
    import open_clip
    import peft
    import timm
    import torchvision
    from dreamsim.config import dreamsim_args, dreamsim_weights
    from dreamsim.model import EMBED_DIMS

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # backbones first: tensor i is seeded by its index, so appending the adapters' keys (read
        # from a model built on these files) leaves the backbone tensors as they were
        shapes = backbone_shapes()
        write_backbones(folder, split_groups(seeded_state(shapes)))
        for variant in VARIANTS:
            shapes.update(adapter_shapes(folder, variant))
        groups = split_groups(seeded_state(shapes))
        write_backbones(folder, groups)
        write_adapters(folder, groups)
        outputs = {variant: run_variant(folder, variant, groups) for variant in VARIANTS}

    out = {
        "versions": {"dreamsim": getattr(dreamsim, "__version__", "0.2.1"), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "peft": peft.__version__,
                     "timm": timm.__version__, "open_clip": open_clip.__version__},
        "backbones": BACKBONES, "variants": {k: [list(b), s] for k, (b, s) in VARIANTS.items()},
        "lora": LORA, "large_hw": LARGE_HW,
        "shapes": shapes,
        "outputs": rounded(outputs),
        # facts of the package, read from it rather than restated
        "package": {
            "model_config": dreamsim_args["model_config"], "img_size": dreamsim_args["img_size"],
            "weights": dreamsim_weights,
            "embed_dims": {k: EMBED_DIMS[k] for k in ("dino_vitb16", "clip_vitb16", "open_clip_vitb16",
                                                     "clip_vitb32", "open_clip_vitb32")},
        },
        "full_size": full_size_shapes(),
    }
    OUTPUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")
    for variant, o in outputs.items():
        print(variant, "distances", [round(d, 6) for d in o["distances"]])


if __name__ == "__main__":
    main()
