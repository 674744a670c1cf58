"""The random-weight SD pipelines and `python -m nabla smoke` (the GPU smoke test's CPU twin)."""

import json

import pytest
import torch

from nabla.cli import main
from nabla.models.random_sd import random_sd_pipeline
from nabla.models.sd import SDBackend


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd15_architecture_has_sd15_parameter_counts():
    # Published sizes of SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder; built on the meta
    # device, so nothing is allocated.
    pipe = random_sd_pipeline("sd15", device="meta")
    assert n_params(pipe.unet) == 859_520_964
    assert n_params(pipe.vae) == 83_653_863
    assert n_params(pipe.text_encoder) == 123_060_480
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 768


def test_unknown_shape_is_named():
    with pytest.raises(ValueError, match="unknown shape 'sd21'.*sd15"):
        random_sd_pipeline("sd21")


def test_tiny_random_pipeline_keeps_sd_block_structure(tmp_path):
    pipe = random_sd_pipeline("tiny-random")
    assert pipe.unet.config.down_block_types[0] == "CrossAttnDownBlock2D"
    assert pipe.unet.config.down_block_types[-1] == "DownBlock2D"
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    backend = SDBackend.from_pretrained(tmp_path / "p")
    assert backend.sample_shape == (4, 8, 8)
    assert backend.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 16, 16)


@pytest.mark.slow
def test_smoke_command_reports_each_round(tmp_path, capsys):
    main(["smoke", "--scale", "tiny-random", "--out", str(tmp_path), "--steps", "4", "--trajectories", "4",
          "--rounds", "2", "--device", "cpu"])
    report = json.loads((tmp_path / "smoke-tiny-random-residual_nabla_db.json").read_text())
    assert len(report["seconds_per_round"]) == 2 and all(s > 0 for s in report["seconds_per_round"])
    assert report["updates_per_round"] == 2  # the release's two optimiser steps per round
    assert report["model"] == "random weights, tiny-random architecture"
    assert (tmp_path / "tiny-random-residual_nabla_db" / "final" / "pytorch_lora_weights.safetensors").exists()
    assert "seconds_per_round" in capsys.readouterr().out
