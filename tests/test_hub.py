"""Models load only from disk or the local Hugging Face cache; what is missing is named at once.

The aesthetic reward runs here on a tiny random CLIP with the real classes (CLIPModel from a
folder) and a random head saved as the real predictor's state dict.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from nabla.hub import HubModel, MissingModelsError, check_available, local_path
from nabla.metrics.features import INCEPTION
from nabla.rewards import build_reward
from nabla.models.clip import CLIP_MEAN, CLIP_STD, clip_preprocess
from nabla.models.dreamsim import DINO_VITB16, RELEASES
from nabla.rewards.aesthetic import aesthetic_head
from nabla.config import TrainConfig, config_models, required_models
from nabla.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
ABSENT = "nabla-test/certainly-not-cached"


def test_missing_models_are_all_named_with_the_fetch_command(tmp_path):
    present = tmp_path / "here.bin"
    present.write_bytes(b"x")
    models = [HubModel(ABSENT, purpose="a prior"), HubModel(str(tmp_path), "here.bin"),
              HubModel("nabla-test/also-absent", "weights.pth", purpose="a reward head")]
    with pytest.raises(MissingModelsError) as error:
        check_available(models, "config/sd15.yaml")
    message = str(error.value)
    assert f"{ABSENT} (a prior)" in message and "nabla-test/also-absent/weights.pth (a reward head)" in message
    assert "here.bin" not in message and "2 model(s)" in message
    assert "python -m nabla fetch-models --config config/sd15.yaml" in message
    assert [m.repo_id for m in error.value.missing] == [ABSENT, "nabla-test/also-absent"]
    assert check_available(models[1:2]) == {models[1]: present}


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path):
    assert local_path(HubModel(str(tmp_path / "nothing"))) is None
    assert local_path(HubModel("./relative/nothing")) is None


def test_sd15_run_stops_before_loading_anything_when_models_are_missing(tmp_path):
    cfg = TrainConfig(scale="sd15", model=ABSENT, reward="aesthetic",
                      reward_options={"clip_model": "nabla-test/clip-absent"})
    assert [m.repo_id for m in required_models(cfg)] == [ABSENT, "nabla-test/clip-absent", "trl-lib/ddpo-aesthetic-predictor"]
    with pytest.raises(MissingModelsError, match="3 model"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_fetch_models_check_lists_what_the_sd15_config_needs():
    models = config_models(ROOT / "config" / "sd15.yaml")
    # a reward's training and held-out prompts come from the same files: listed once
    assert [str(m).split(" (")[0] for m in models] == [
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "openai/clip-vit-large-patch14",
        "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
        "datasets/zhwang/HPDv2/benchmark/photo.json", "datasets/zhwang/HPDv2/benchmark/paintings.json",
        "xswu/HPSv2/HPS_v2.1_compressed.pt", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "https://docs.google.com/spreadsheets/d/1y7nAbmR4FREi6npB1u-Bo3GFdwdOPYJc617rBOxIRHY/gviz/tq?tqx=out:csv&sheet=Sheet1",
        "THUDM/ImageReward/ImageReward.pt", "THUDM/ImageReward/med_config.json", "google-bert/bert-base-uncased",
        RELEASES["ensemble"].url, DINO_VITB16.url, INCEPTION.url,
    ]
    only_aesthetic = config_models(ROOT / "config" / "train" / "sd15.yaml", rewards=["aesthetic"])
    assert [m.repo_id for m in only_aesthetic] == [
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "openai/clip-vit-large-patch14", "trl-lib/ddpo-aesthetic-predictor"]
    assert config_models(ROOT / "config" / "train" / "tiny.yaml") == []
    assert config_models(ROOT / "config" / "train" / "tiny.yaml", ["inception"]) == [INCEPTION]


def test_a_url_model_is_looked_up_under_hf_home_and_named_when_missing(empty_hf_home):
    with pytest.raises(MissingModelsError) as error:
        check_available([INCEPTION], "config/sd15.yaml")
    assert f"{INCEPTION.url} (FID features" in str(error.value) and "1 model(s)" in str(error.value)
    INCEPTION.cache_path.parent.mkdir(parents=True)
    INCEPTION.cache_path.write_bytes(b"x")
    assert INCEPTION.cache_path == empty_hf_home / "nabla" / "inception-2015-12-05.pt"
    assert check_available([INCEPTION]) == {INCEPTION: INCEPTION.cache_path}


def test_fetch_models_check_is_offline_and_exits_with_the_list(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-m", "nabla", "fetch-models", "--check", "--config", "config/sd15.yaml"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "14 model(s) are not on this machine" in result.stderr
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in result.stderr


def test_clip_preprocess_resizes_and_normalises():
    gray = torch.full((2, 3, 64, 64), 0.5)
    out = clip_preprocess(gray, 32)
    assert out.shape == (2, 3, 32, 32)
    want = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 7, 9], want)


def test_aesthetic_reward_is_clip_embedding_then_head(aesthetic_stand_ins):
    reward = build_reward("aesthetic", **aesthetic_stand_ins)
    images = torch.rand(3, 3, 48, 48, requires_grad=True)
    scores = reward(images)
    assert scores.shape == (3,)
    # independently: the CLIP model's own image features, normalised, through the saved head
    clip = CLIPModel.from_pretrained(aesthetic_stand_ins["clip_model"])
    features = clip.get_image_features(pixel_values=clip_preprocess(images.detach(), 32))
    features = getattr(features, "pooler_output", features)
    head = aesthetic_head(12).eval()
    state = torch.load(Path(aesthetic_stand_ins["predictor_repo"]) / "head.pth", weights_only=True)
    head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    want = head(features / features.norm(dim=-1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(scores.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(scores.sum(), images)
    assert grad.abs().sum() > 0 and not any(p.requires_grad for p in reward.parameters())
