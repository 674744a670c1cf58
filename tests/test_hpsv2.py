"""HPSv2: the open_clip → transformers conversion against open_clip's own outputs, and the reward.

The reference outputs come from open_clip 3.3.0 itself on a tiny model with seeded weights
(tests/reference/open_clip_reference.py, run where open_clip and torchvision import)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from open_clip_reference import CLIP_MEAN, CLIP_STD, REFERENCE, TEXT, TOKENS, seeded_images, tiny_config
from seeded import seeded_state

from nabla.hub import MissingModelsError
from nabla.models.open_clip import load_open_clip_checkpoint, open_clip_to_transformers
from nabla.rewards import build_reward


def converted_clip() -> CLIPModel:
    clip = CLIPModel(tiny_config(eos_token_id=2)).eval()  # 2: transformers pools at the argmax id, as open_clip
    clip.load_state_dict(open_clip_to_transformers(seeded_state(REFERENCE["shapes"])), strict=True)
    return clip


@torch.no_grad()
def test_converted_weights_give_open_clips_features():
    clip = converted_clip()
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    vision = clip.vision_model(pixel_values=(seeded_images() - mean) / std).pooler_output
    text = clip.text_model(input_ids=torch.tensor(TOKENS)).pooler_output
    torch.testing.assert_close(clip.visual_projection(vision), torch.tensor(REFERENCE["image_features"]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(clip.text_projection(text), torch.tensor(REFERENCE["text_features"]), atol=1e-5, rtol=1e-4)


def test_conversion_names_keys_it_cannot_place():
    state = seeded_state(REFERENCE["shapes"])
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(16)  # LayerScale: not in CLIPModel
    with pytest.raises(ValueError, match=r"1 key\(s\) .*: visual\.transformer\.resblocks\.0\.ls_1\.gamma"):
        open_clip_to_transformers(state)


def test_checkpoint_loads_into_an_uninitialised_model_with_every_weight(hps_stand_ins):
    base = Path(hps_stand_ins["base_model"])
    clip = load_open_clip_checkpoint(Path(hps_stand_ins["checkpoint_repo"]) / "hps.pt", base)
    assert not any(t.is_meta for t in [*clip.parameters(), *clip.buffers()])
    assert all(p.dtype == torch.float32 for p in clip.parameters())
    half = seeded_state(REFERENCE["shapes"])["visual.conv1.weight"].half().float()
    torch.testing.assert_close(clip.vision_model.embeddings.patch_embedding.weight, half, rtol=0, atol=0)


def test_hps_reward_is_the_cosine_of_clips_image_and_text_features(hps_stand_ins):
    reward = build_reward("hpsv2", **hps_stand_ins)
    images = seeded_images()  # at the tiny model's 32×32 the resize is the identity
    prompts = ["a photo of a cat", "dog"]
    with torch.no_grad():
        scores = reward(images, prompts)

    clip = load_open_clip_checkpoint(Path(hps_stand_ins["checkpoint_repo"]) / "hps.pt", hps_stand_ins["base_model"])
    tokens = reward.text.tokenizer(prompts, padding="max_length", max_length=TEXT["context_length"], return_tensors="pt")
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image_features = clip.get_image_features(pixel_values=(images - mean) / std)
        text_features = clip.get_text_features(input_ids=tokens.input_ids)
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    expected = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


def test_hps_reward_needs_one_prompt_per_image(hps_stand_ins):
    reward = build_reward("hpsv2", **hps_stand_ins)
    with pytest.raises(ValueError, match="2 images and no prompts"):
        reward(seeded_images(), None)


def test_missing_hps_models_are_named_offline(empty_hf_home):
    with pytest.raises(MissingModelsError) as error:
        build_reward("hpsv2")
    message = str(error.value)
    assert "xswu/HPSv2/HPS_v2.1_compressed.pt" in message and "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message
