"""Shared fixtures: small models built in seconds, never downloaded."""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import nabla.models  # noqa: F401  first: its filter drops transformers' torchvision notes before diffusers loads
from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).parent / "reference"))  # the reference scripts' seeded weights

if os.environ.get("PYTEST_XDIST_WORKER"):  # one process per core (pytest -n): one thread each
    torch.set_num_threads(1)


@pytest.fixture()
def empty_hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face home, offline: the hub cache and HF_HOME/nabla (URL models) both under
    ``tmp_path``, which it returns; for the missing-model messages."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


@pytest.fixture(scope="session")
def random_sd_dir(tmp_path_factory):
    """A tiny SD-shaped pipeline with random weights, saved in diffusers format."""
    from nabla.models.tiny import (
        TinyPriorConfig, build_text_encoder, build_unet, build_vae, ddim_scheduler,
    )
    from nabla.models.tokenizer import write_word_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("random_sd")
    cfg = TinyPriorConfig()
    tokenizer = write_word_tokenizer(["cat", "red", "heart", "face"], folder / "tokenizer_src")
    pipeline = StableDiffusionPipeline(
        vae=build_vae(cfg),
        text_encoder=build_text_encoder(cfg, tokenizer),
        tokenizer=tokenizer,
        unet=build_unet(cfg, latent_size=cfg.image_size // 2),
        scheduler=ddim_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_prior_dir(tmp_path_factory):
    """A toy2d prior trained for a few seconds (good enough to exercise training code)."""
    from nabla.data.toy2d import circle_mixture
    from nabla.models.toy2d import pretrain_toy2d, save_toy2d

    folder = tmp_path_factory.mktemp("toy_prior")
    model, _ = pretrain_toy2d(circle_mixture(), steps=300, batch_size=256, seed=0)
    save_toy2d(model, circle_mixture(), folder)
    return folder


@pytest.fixture(scope="session")
def openmoji_cache(tmp_path_factory):
    """The OpenMoji render cache: a copy of the repository's if present (never written to), else rendered
    here, so that a test which copies the file finds it whichever test of the worker runs first."""
    from nabla.data.openmoji import load_openmoji

    repo_cache = Path(__file__).resolve().parents[1] / "runs" / "data" / "openmoji32.npz"
    cache = tmp_path_factory.mktemp("openmoji") / "openmoji32.npz"
    if repo_cache.exists():
        shutil.copy(repo_cache, cache)
    load_openmoji(cache)  # renders a missing or stale cache once
    return cache


@pytest.fixture(scope="session")
def aesthetic_stand_ins(tmp_path_factory):
    """Aesthetic reward options pointing at a tiny random CLIP folder (the real CLIPModel class)
    and a random head saved with the LAION predictor's keys (layers.N.weight)."""
    from transformers import CLIPConfig, CLIPModel

    from nabla.rewards.aesthetic import aesthetic_head

    folder = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=12,
    )
    CLIPModel(config).save_pretrained(folder / "clip")
    head = aesthetic_head(12)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, folder / "head.pth")
    return {"clip_model": str(folder / "clip"), "predictor_repo": str(folder), "predictor_file": "head.pth"}


@pytest.fixture(scope="session")
def inception_stand_in(tmp_path_factory):
    """A TorchScript file with the FID Inception's call, model(images in [0, 255], return_features=True):
    its two 'features' are each image's maximum and mean, so the [0, 1] → [0, 255] scaling shows."""

    class InceptionStandIn(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            if not return_features:
                return torch.zeros(x.shape[0], 1008)  # the real network's logits
            return torch.stack([x.amax(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3))], dim=1)

    path = tmp_path_factory.mktemp("inception") / "inception-stand-in.pt"
    torch.jit.script(InceptionStandIn()).save(str(path))
    return path


@pytest.fixture(scope="session")
def hps_stand_ins(tmp_path_factory):
    """An open_clip-format checkpoint of the reference's seeded weights, saved as HPSv2's is, and a
    base-model folder with its transformers config and a small CLIP tokenizer."""
    from open_clip_reference import REFERENCE, TEXT, tiny_config
    from seeded import seeded_state

    from nabla.models.tokenizer import write_word_tokenizer

    folder = tmp_path_factory.mktemp("hps")
    tokenizer = write_word_tokenizer(["cat", "dog", "photo"], folder / "base", max_length=TEXT["context_length"])
    assert len(tokenizer) <= TEXT["vocab_size"]
    tiny_config(tokenizer.eos_token_id, tokenizer.bos_token_id).save_pretrained(folder / "base")
    torch.save({"state_dict": {k: v.half() for k, v in seeded_state(REFERENCE["shapes"]).items()}}, folder / "hps.pt")
    return {"checkpoint_repo": str(folder), "checkpoint_file": "hps.pt", "base_model": str(folder / "base")}


@pytest.fixture(scope="session")
def imagereward_stand_ins(tmp_path_factory):
    """ImageReward options pointing at a folder with the reference's tiny seeded model saved as the
    release's two files, and a bert-style vocabulary folder (the real tokenizer class)."""
    import json

    from imagereward_reference import REFERENCE
    from seeded import seeded_state

    folder = tmp_path_factory.mktemp("imagereward")
    torch.save(seeded_state(REFERENCE["shapes"]), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(REFERENCE["med_config"]))
    (folder / "bert").mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "heart", "dog"]
    (folder / "bert" / "vocab.txt").write_text("\n".join(words) + "\n")
    return {"repo": str(folder), "tokenizer": str(folder / "bert"), "vision": REFERENCE["vision"]}
