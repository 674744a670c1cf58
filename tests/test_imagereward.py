"""ImageReward on transformers' BLIP: the conversion against the release's own outputs.

The reference outputs come from image-reward 1.5's own classes (ImageReward.py, BLIP vit.py and
med.py) on a tiny model with seeded weights (tests/reference/imagereward_reference.py, run where
timm, fairscale and torchvision import); here only transformers is needed."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights

from imagereward_reference import REFERENCE, seeded_images, seeded_large_images
from seeded import seeded_state

from nabla.hub import MissingModelsError

from nabla.models.imagereward import (
    MAX_LENGTH, REWARD_MEAN, REWARD_STD, ImageRewardScorer, blip_configs, imagereward_to_transformers,
    load_imagereward_checkpoint, preprocess, tokenize,
)
from nabla.rewards import build_reward

TOL = dict(atol=1e-5, rtol=1e-5)


def converted_scorer() -> ImageRewardScorer:
    scorer = ImageRewardScorer(*blip_configs(REFERENCE["med_config"], REFERENCE["vision"])).eval()
    scorer.load_state_dict(imagereward_to_transformers(seeded_state(REFERENCE["shapes"])), strict=True)
    return scorer


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(REFERENCE["tokens"]), torch.tensor(REFERENCE["masks"])


def test_the_reference_is_the_releases_normalisation():
    assert (REFERENCE["reward_mean"], REFERENCE["reward_std"]) == (REWARD_MEAN, REWARD_STD)


@torch.no_grad()
def test_converted_weights_give_the_releases_image_embeddings_features_and_scores():
    scorer = converted_scorer()
    ids, masks = inputs()
    pixels = preprocess(seeded_images(), REFERENCE["vision"]["image_size"])  # 32×32: normalisation only
    image_embeds = scorer.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(image_embeds, torch.tensor(REFERENCE["image_embeds"]), **TOL)
    torch.testing.assert_close(scorer.features(pixels, ids, masks), torch.tensor(REFERENCE["features"]), **TOL)
    torch.testing.assert_close(scorer.score_pixels(pixels, ids, masks), torch.tensor(REFERENCE["scores"]), **TOL)
    torch.testing.assert_close(scorer(seeded_images(), ids, masks), torch.tensor(REFERENCE["scores"]), **TOL)


@torch.no_grad()
def test_resizing_matches_torchvisions_resize_and_centre_crop():
    scorer = converted_scorer()
    images = seeded_large_images()  # 48×40: shorter side to 32 (48 → 38), centre crop 32×32
    torch.testing.assert_close(preprocess(images, REFERENCE["vision"]["image_size"]),
                               torch.tensor(REFERENCE["resized_pixels"]), **TOL)
    torch.testing.assert_close(scorer(images, *inputs()), torch.tensor(REFERENCE["resized_scores"]), **TOL)


def test_the_reward_is_differentiable_with_respect_to_the_images():
    scorer = converted_scorer().requires_grad_(False)
    images = seeded_large_images().requires_grad_(True)
    scorer(images, *inputs()).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_configs_carry_the_facts_the_tiny_weights_cannot_tell_apart():
    # at 0.3-scaled random weights, eps 1e-5 for 1e-6 or a tanh GELU in the ViT moves the scores
    # by under 1e-4: state the release's values (vit.py: LayerNorm eps 1e-6, nn.GELU, mlp_ratio 4;
    # med_config.json: eps 1e-12; blip_pretrain.py: encoder_width = the ViT's width)
    vision, text = blip_configs(REFERENCE["full_med_config"])
    assert (vision.layer_norm_eps, vision.hidden_act, vision.intermediate_size) == (1e-6, "gelu", 4096)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1024, 24, 16)
    assert (vision.image_size, vision.patch_size) == (224, 16)
    assert (text.layer_norm_eps, text.hidden_act, text.encoder_hidden_size, text.vocab_size) == (1e-12, "gelu", 1024, 30524)
    assert text.is_decoder  # transformers builds the cross-attention layers only for a "decoder" config


def test_conversion_names_keys_it_cannot_place():
    state = seeded_state(REFERENCE["shapes"])
    state["blip.text_encoder.pooler.dense.weight"] = torch.ones(16, 16)  # no pooler in ImageReward
    state["blip.visual_encoder.blocks.0.ls1.gamma"] = torch.ones(24)  # LayerScale: not BLIP's ViT
    with pytest.raises(ValueError, match=r"2 key\(s\) .*: blip\.text_encoder\.pooler\.dense\.weight, "
                                         r"blip\.visual_encoder\.blocks\.0\.ls1\.gamma"):
        imagereward_to_transformers(state)


def test_full_size_release_keys_fill_the_full_size_port_exactly():
    # the release's ViT-L/16 + BERT-base key names and shapes (from the reference run) against the
    # transformers models built from BLIP's med_config.json and the ViT-L facts
    full = {k: torch.empty(shape, device="meta") for k, shape in REFERENCE["full_shapes"].items()}
    converted = imagereward_to_transformers(full)
    with init_empty_weights():
        scorer = ImageRewardScorer(*blip_configs(REFERENCE["full_med_config"]))
    expected = {k: tuple(v.shape) for k, v in scorer.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert sum(v.numel() for v in converted.values()) > 440e6  # ViT-L (~303M) + BERT with cross-attention


def test_checkpoint_file_loads_into_an_uninitialised_scorer(tmp_path):
    import json

    torch.save(seeded_state(REFERENCE["shapes"]), tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text(json.dumps(REFERENCE["med_config"]))
    scorer = load_imagereward_checkpoint(tmp_path / "ImageReward.pt", tmp_path / "med_config.json", REFERENCE["vision"])
    assert not any(t.is_meta for t in [*scorer.parameters(), *scorer.buffers()])
    assert all(p.dtype == torch.float32 for p in scorer.parameters()) and not scorer.training
    with torch.no_grad():
        torch.testing.assert_close(scorer(seeded_images(), *inputs()), torch.tensor(REFERENCE["scores"]), **TOL)


def test_prompts_are_tokenized_as_imagereward_does(tmp_path):
    from transformers import BertTokenizer

    # a stand-in vocabulary: bert-base-uncased's special tokens, and lower-casing
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat"]))
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True)
    ids, mask = tokenize(tokenizer, ["A photo of a cat", "cat " * 50])
    assert ids.shape == mask.shape == (2, MAX_LENGTH)
    assert ids[0, :7].tolist() == [2, 5, 6, 7, 5, 8, 3] and ids[0, 7:].eq(0).all()  # [CLS] … [SEP] [PAD]…
    assert mask[0].tolist() == [1] * 7 + [0] * (MAX_LENGTH - 7)
    assert ids[1, 0] == 2 and ids[1, -1] == 3 and mask[1].all()  # truncated, still ends in [SEP]


def test_the_reward_tokenizes_each_prompt_and_scores_its_image(imagereward_stand_ins):
    reward = build_reward("imagereward", **imagereward_stand_ins)
    prompts = ["a photo of a cat", "heart"]
    with torch.no_grad():
        scores = reward(seeded_large_images(), prompts)
        expected = converted_scorer()(seeded_large_images(), *tokenize(reward.tokenizer, prompts))
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    assert reward.tokenizer.convert_ids_to_tokens(tokenize(reward.tokenizer, prompts)[0][1, :3].tolist()) == [
        "[CLS]", "heart", "[SEP]"]
    with pytest.raises(ValueError, match="2 images and 1 prompts"):
        reward(seeded_large_images(), ["cat"])


def test_missing_imagereward_files_are_named_offline(empty_hf_home):
    with pytest.raises(MissingModelsError) as error:
        build_reward("imagereward")
    message = str(error.value)
    assert "3 model(s)" in message and "THUDM/ImageReward/ImageReward.pt" in message
    assert "THUDM/ImageReward/med_config.json" in message and "google-bert/bert-base-uncased" in message
