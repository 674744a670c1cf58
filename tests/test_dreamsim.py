"""DreamSim on transformers: the conversion against the dreamsim package's own outputs.

The reference outputs come from dreamsim 0.2.1's own ``dreamsim(pretrained=True)`` on tiny backbones
with seeded weights, LoRA adapters included (tests/reference/dreamsim_reference.py, run where dreamsim, timm,
open_clip, torchvision and peft import); here only transformers is needed."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from accelerate import init_empty_weights

from dreamsim_reference import (
    ADAPTER_DIRS, FILES, REFERENCE, seeded_images, seeded_large_images, seeded_uint8_image, split_groups,
)
from seeded import seeded_state

from nabla.hub import HubModel, MissingModelsError
from nabla.metrics.features import DreamSimFeatures
from nabla.models.dreamsim import (
    BRANCHES, DINO_BLOCK, DINO_VITB16, IMAGE_SIZE, RELEASES, VARIANTS, VIT_BASE, DreamSimEmbedding,
    branch_config, clip_to_transformers, dino_to_transformers, dreamsim_to_transformers, load_dreamsim,
    lora_scaling, merge_lora, split_adapter,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def release_weights() -> dict[str, dict[str, torch.Tensor]]:
    return split_groups(seeded_state(REFERENCE["shapes"]))


def converted_embedding(variant: str, groups=None, adapter_config=None) -> DreamSimEmbedding:
    groups = groups or release_weights()
    outputs = REFERENCE["outputs"][variant]
    branches = outputs["branches"]
    model = DreamSimEmbedding(branches, [REFERENCE["backbones"][b] for b in branches], outputs["image_size"]).eval()
    state = dreamsim_to_transformers({b: groups[b] for b in branches}, groups[f"lora-{variant}"],
                                     adapter_config or REFERENCE["lora"], variant)
    model.load_state_dict(state, strict=True)
    return model


def cosine_distances(embeddings: torch.Tensor, pairs) -> torch.Tensor:
    return torch.stack([1 - torch.nn.functional.cosine_similarity(embeddings[i], embeddings[j], dim=0) for i, j in pairs])


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_converted_weights_give_the_releases_features_embeddings_and_distances(variant):
    expected = REFERENCE["outputs"][variant]
    model = converted_embedding(variant)
    images = seeded_images(expected["image_size"])
    for feature, reference in zip(model.branch_features(images), expected["features"]):
        torch.testing.assert_close(feature, torch.tensor(reference), **TOL)
    embeddings = model(images)
    torch.testing.assert_close(embeddings, torch.tensor(expected["embeddings"]), **TOL)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(images)), **TOL)
    torch.testing.assert_close(cosine_distances(embeddings, expected["pairs"]), torch.tensor(expected["distances"]),
                               atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(model(images[:1]), embeddings[:1], **TOL)  # one image: no batch quirk


@pytest.mark.parametrize("variant", ["ensemble", "open_clip_vitb32"])
@torch.no_grad()
def test_other_sizes_are_resized_as_the_releases_bicubic_resize(variant):
    expected = REFERENCE["outputs"][variant]
    model = converted_embedding(variant)
    # 80×56 squashed to the model's square size: torchvision's antialiased bicubic on tensors
    torch.testing.assert_close(model(seeded_large_images()), torch.tensor(expected["resized_embeddings"]), **TOL)
    # the release's PIL path (uint8 resize, then ToTensor) agrees up to its 8-bit rounding
    pil_like = model(seeded_uint8_image(expected["image_size"]).float().unsqueeze(0) / 255)
    torch.testing.assert_close(pil_like, torch.tensor(expected["pil_embedding"]), atol=2e-3, rtol=0)


@torch.no_grad()
def test_the_lora_merge_matters_and_uses_alpha_over_r():
    expected = torch.tensor(REFERENCE["outputs"]["ensemble"]["embeddings"])
    images = seeded_images(REFERENCE["outputs"]["ensemble"]["image_size"])
    for wrong in ({**REFERENCE["lora"], "lora_alpha": 0.0}, {**REFERENCE["lora"], "r": 1}):
        assert (converted_embedding("ensemble", adapter_config=wrong)(images) - expected).abs().max() > 1e-3


def test_merge_lora_is_the_adapters_linear_map():
    generator = torch.Generator().manual_seed(0)
    w, b = torch.randn(12, 5, generator=generator), torch.randn(12, generator=generator)
    a, up = torch.randn(2, 5, generator=generator), torch.randn(12, 2, generator=generator)
    x = torch.randn(7, 5, generator=generator)
    merged = merge_lora({"qkv.weight": w, "qkv.bias": b}, {"qkv.weight": (a, up)}, 0.375)
    torch.testing.assert_close(x @ merged["qkv.weight"].T + merged["qkv.bias"], x @ w.T + b + 0.375 * (x @ a.T) @ up.T)
    assert merged["qkv.bias"] is b and torch.equal(w, w.clone())  # a new dict; inputs unchanged
    with pytest.raises(ValueError, match="lacks: proj.weight"):
        merge_lora({"qkv.weight": w}, {"proj.weight": (a, up)}, 1.0)


def test_adapter_config_is_read_as_the_release_builds_its_loraconfig():
    assert lora_scaling({"r": 16, "lora_alpha": 0.5, "bias": "none", "use_rslora": True}) == 0.5 / 16
    with pytest.raises(ValueError, match="bias='lora_only'"):
        lora_scaling({"r": 16, "lora_alpha": 0.5, "bias": "lora_only"})


def test_conversions_name_keys_they_cannot_place():
    groups = release_weights()
    dino = {**groups["dino_vitb16"], "blocks.0.ls1.gamma": torch.ones(24), "head.weight": torch.ones(3, 24)}
    with pytest.raises(ValueError, match=r"2 key\(s\) of the DINO checkpoint .*: blocks\.0\.ls1\.gamma, head\.weight"):
        dino_to_transformers(dino)
    clip = {**groups["clip_vitb16"], "blocks.1.attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(ValueError, match=r"1 key\(s\) of the CLIP-as-DINO checkpoint .*: blocks\.1\.attn\.q_norm\.weight"):
        clip_to_transformers(clip)
    with pytest.raises(ValueError, match="lacks proj"):
        clip_to_transformers({k: v for k, v in groups["clip_vitb16"].items() if k != "proj"})
    adapter = dict(groups["lora-ensemble"])
    adapter["base_model.model.extractor_list.0.proj.mlp.0.lora_A.weight"] = torch.ones(4, 24)  # the DINO head
    adapter["base_model.model.extractor_list.3.model.blocks.0.attn.qkv.lora_A.weight"] = torch.ones(4, 24)
    with pytest.raises(ValueError, match=r"2 key\(s\) of the LoRA adapter .*extractor_list\.0\.proj\.mlp\.0\.lora_A"):
        split_adapter(adapter, 3)
    lone = {k: v for k, v in groups["lora-dino_vitb16"].items() if not k.endswith("blocks.5.attn.qkv.lora_B.weight")}
    with pytest.raises(ValueError, match=r"without.*0:blocks\.5\.attn\.qkv\.weight"):
        split_adapter(lone, 1)


def test_variants_and_configs_carry_the_releases_facts():
    package = REFERENCE["package"]
    assert package["img_size"] == IMAGE_SIZE == 224
    for variant, (branches, adapter_dir) in VARIANTS.items():
        config = package["model_config"][variant]
        assert config["model_type"].split(",") == list(branches) and config["lora"]
        assert config["stride"].split(",") == [str(BRANCHES[b].patch_size) for b in branches]  # stride = patch: no re-striding
        expected_feat = ["cls" if BRANCHES[b].kind == "dino" else "embedding" for b in branches]
        assert config["feat_type"].split(",") == expected_feat
        assert adapter_dir == ADAPTER_DIRS[variant] and RELEASES[variant].url == package["weights"][variant]
    for name, branch in BRANCHES.items():
        feature = "cls" if branch.kind == "dino" else "embedding"
        assert package["embed_dims"][name][feature] == (VIT_BASE["width"] if branch.kind == "dino" else VIT_BASE["proj_dim"])
        assert branch.file is None or branch.file == FILES[name]
    # at 0.3-scaled random weights an eps of 1e-5 for 1e-6 moves little: state the release's values
    # (vit_base: LayerNorm eps 1e-6, nn.GELU; load_*clip_as_dino: eps 1e-5, QuickGELU for OpenAI CLIP only)
    assert REFERENCE["full_size"]["vit_base16_layer_norms"] == ["LayerNorm1e-06"]
    dino, clip, open_clip = (branch_config(b) for b in VARIANTS["ensemble"][0])
    assert (dino.layer_norm_eps, dino.hidden_act, dino.qkv_bias) == (1e-6, "gelu", True)
    assert (clip.layer_norm_eps, clip.hidden_act, open_clip.layer_norm_eps, open_clip.hidden_act) == (1e-5, "quick_gelu", 1e-5, "gelu")
    for config in (dino, clip, open_clip):
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (768, 12, 12, 3072)
        assert (config.image_size, config.patch_size) == (224, 16)
    assert clip.projection_dim == open_clip.projection_dim == 512 and DINO_BLOCK == 11


def test_full_size_release_keys_fill_the_full_size_port_exactly():
    full = REFERENCE["full_size"]
    meta = lambda shapes: {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # noqa: E731
    dino = meta(full["vit_base16"])
    clip = meta({**full["vit_base16"], **full["clip_extra"]})
    # the release's adapter layout at the training config's rank (r=16): LoRA on every block's qkv
    adapter = {}
    for index in range(3):
        for block in range(12):
            prefix = f"base_model.model.extractor_list.{index}.model.blocks.{block}.attn.qkv"
            adapter[f"{prefix}.lora_A.weight"] = torch.empty(16, 768, device="meta")
            adapter[f"{prefix}.lora_B.weight"] = torch.empty(3 * 768, 16, device="meta")
    converted = dreamsim_to_transformers({"dino_vitb16": dino, "clip_vitb16": clip, "open_clip_vitb16": clip}, adapter,
                                         {"r": 16, "lora_alpha": 0.5, "bias": "none"})
    with init_empty_weights():
        model = DreamSimEmbedding(VARIANTS["ensemble"][0])
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(v.numel() for v in converted.values()) > 255e6  # three ViT-B/16 (~86M each) + two projections


@pytest.mark.parametrize("packed", [True, False])
def test_release_files_load_into_an_uninitialised_embedding(tmp_path, packed):
    # the release's layout: backbone files and adapter folders at the zip's root; DINO's file apart
    groups, variant = release_weights(), "ensemble"
    folder = tmp_path / "release"
    (folder / ADAPTER_DIRS[variant]).mkdir(parents=True)
    for name in VARIANTS[variant][0][1:]:
        torch.save({"state_dict": groups[name]}, folder / FILES[name])
    (folder / ADAPTER_DIRS[variant] / "adapter_config.json").write_text(json.dumps({**REFERENCE["lora"], "peft_type": "LORA"}))
    torch.save(groups[f"lora-{variant}"], folder / ADAPTER_DIRS[variant] / "adapter_model.bin")  # the older peft file
    torch.save(groups["dino_vitb16"], tmp_path / "dino_vitbase16_pretrain.pth")
    release = folder
    if packed:
        release = tmp_path / "dreamsim_ensemble_checkpoint.zip"
        with zipfile.ZipFile(release, "w") as archive:
            for path in folder.rglob("*"):
                archive.write(path, path.relative_to(folder))
    outputs = REFERENCE["outputs"][variant]
    model = load_dreamsim(release, tmp_path / "dino_vitbase16_pretrain.pth", variant,
                          [REFERENCE["backbones"][b] for b in outputs["branches"]], outputs["image_size"])
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(seeded_images(outputs["image_size"])), torch.tensor(outputs["embeddings"]), **TOL)
    with pytest.raises(ValueError, match="DINO"):
        load_dreamsim(release, None, variant)


def test_feature_extractor_names_the_release_files(empty_hf_home):
    assert DreamSimFeatures.required_models() == [RELEASES["ensemble"], DINO_VITB16]
    assert DreamSimFeatures.required_models("/models/dreamsim") == [
        HubModel("/models/dreamsim", "dreamsim_ensemble_checkpoint.zip"), HubModel("/models/dreamsim", "dino_vitbase16_pretrain.pth")]
    with pytest.raises(MissingModelsError) as error:
        DreamSimFeatures()
    message = str(error.value)
    assert "2 model(s)" in message and "dreamsim_ensemble_checkpoint.zip" in message and "dino_vitbase16_pretrain.pth" in message
