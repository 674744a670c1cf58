"""Pretraining the tiny prior end to end (a few steps) and drawing its grid from the CLI."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from safetensors.torch import load_file

from nabla.cli import main
from nabla.models.sd import SDBackend
from nabla.models.tiny import TinyPriorConfig, word_balanced_weights
from nabla.options import ConfigError


def test_word_balanced_weights_draw_every_word_equally():
    captions = ["flag a", "flag b", "flag c", "red heart", "cat face"]
    weights = word_balanced_weights(captions, ("flag", "heart", "cat"))
    per_word = [weights[:3].sum(), weights[3], weights[4]]
    assert torch.allclose(torch.stack(per_word), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("levels", [0, 1, 3])
def test_unet_has_cross_attention_at_exactly_the_lowest_resolution_levels(levels):
    from nabla.models.tiny import build_unet

    cfg = TinyPriorConfig(unet_attention_levels=levels, unet_attention_heads=2)
    unet = build_unet(cfg, latent_size=16)
    down = [type(b).__name__ for b in unet.down_blocks]
    up = [type(b).__name__ for b in unet.up_blocks]
    n = len(cfg.unet_channels)
    assert down == ["DownBlock2D"] * (n - levels) + ["CrossAttnDownBlock2D"] * levels
    assert up == list(reversed([name.replace("Down", "Up") for name in down]))
    heads = {m.heads for m in unet.modules() if type(m).__name__ == "Attention"}
    assert heads == {2}  # the mid block's attention too


def test_an_attention_layout_the_unet_cannot_have_is_refused_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="unet_attention_levels = 4: must be in \\[0, 3\\]"):
        TinyPriorConfig(unet_attention_levels=4)
    # the head count divides every attending width: 32 and 64 (8x8, 4x4 and the mid block) ...
    with pytest.raises(ConfigError, match="unet_attention_heads = 3: must divide the attention blocks' widths \\[32, 64\\]"):
        TinyPriorConfig(unet_attention_heads=3)
    TinyPriorConfig(unet_attention_levels=3, unet_attention_heads=16)
    with pytest.raises(ConfigError, match="widths \\[16, 32, 64\\]"):  # ... and 16 where 16x16 attends too
        TinyPriorConfig(unet_attention_levels=3, unet_attention_heads=32)
    config = tmp_path / "prior.yaml"
    config.write_text("unet_attention_levels: 1\n")
    # from the CLI, before the VAE stage, as a one-line error; --set's values (the workflow's prior
    # section) over --config's
    with pytest.raises(SystemExit, match="error: TinyPriorConfig: unet_attention_levels = -1"):
        main(["pretrain", "--scale", "tiny", "--out", str(tmp_path / "p"), "--config", str(config),
              "--set", '{"unet_attention_levels": -1}', "--data-cache", str(tmp_path / "absent.npz"), "--no-progress"])
    assert not (tmp_path / "p").exists()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, openmoji_cache):
    out = tmp_path_factory.mktemp("tiny_prior")
    main(["pretrain", "--scale", "tiny", "--out", str(out), "--data-cache", str(openmoji_cache),
          "--vae-steps", "3", "--unet-steps", "3", "--no-progress"])
    return out


def test_pretrain_writes_a_diffusers_pipeline_that_loads_offline(pretrained):
    pipe = StableDiffusionPipeline.from_pretrained(pretrained, local_files_only=True, safety_checker=None)
    assert pipe.unet.config.sample_size == 16 and pipe.vae.config.latent_channels == 4
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the latents, not SD's constant
    assert pipe.tokenizer.tokenize("cat heart") == ["cat</w>", "heart</w>"]
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.set_alpha_to_one
    config = json.loads((pretrained / "pretrain_config.json").read_text())
    assert config["vae_steps"] == 3 and config["unet_steps"] == 3


def test_pretrain_logs_both_stages(pretrained):
    rows = (pretrained / "pretrain_log.csv").read_text().splitlines()
    assert rows[0] == "stage,step,loss,seconds"
    stages = [r.split(",")[0] for r in rows[1:]]
    assert stages.count("vae") >= 2 and stages.count("unet") >= 2


def test_scaling_factor_gives_unit_variance_latents(pretrained, openmoji_cache):
    from nabla.models.tiny import encode_latents, to_tensor, training_set

    backend = SDBackend.from_pretrained(pretrained)
    data = training_set(TinyPriorConfig(), openmoji_cache)
    mean, _ = encode_latents(backend.vae, to_tensor(data.images[:128]))
    assert abs(float(mean.std() * backend.vae.config.scaling_factor) - 1.0) < 0.1


def test_sample_command_writes_a_grid(pretrained, tmp_path):
    out = tmp_path / "grid.png"
    main(["sample", "--model", str(pretrained), "--prompts", "cat", "heart", "--seeds", "0", "1", "2",
          "--steps", "2", "--out", str(out), "--credit"])
    image = Image.open(out)
    assert image.width > 3 * 32 * 3 and image.height >= 2 * 32 * 3


def test_unknown_pretrain_key_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("unet_stepz: 3\n")
    with pytest.raises(SystemExit, match="error: TinyPriorConfig: unknown key .unet_stepz."):
        main(["pretrain", "--scale", "tiny", "--out", str(tmp_path / "p"), "--config", str(config)])


def test_sample_with_prior_puts_a_prior_row_above_each_tuned_row(pretrained, tmp_path):
    backend = SDBackend.from_pretrained(pretrained)
    backend.add_lora(rank=2)
    with torch.no_grad():
        for p in backend.lora_parameters():
            p.add_(0.5)
    backend.save_lora(tmp_path / "lora")
    main(["sample", "--model", str(pretrained), "--prompts", "cat", "heart", "--seeds", "0", "1",
          "--steps", "2", "--lora", str(tmp_path / "lora"), "--lora-rank", "2", "--with-prior",
          "--out", str(tmp_path / "grid.png")])
    rows = 4 * 3 * 32  # prior and tuned rows of two prompts, upscaled ×3
    assert Image.open(tmp_path / "grid.png").height >= rows
    with pytest.raises(SystemExit, match="give --lora"):
        main(["sample", "--model", str(pretrained), "--with-prior", "--out", str(tmp_path / "x.png")])


def test_a_rerun_reuses_the_finished_vae_stage_and_keeps_its_log(pretrained, openmoji_cache):
    stage = json.loads((pretrained / "vae_stage.json").read_text())
    assert stage["config"]["vae_steps"] == 3 and stage["heldout_psnr_db"] > 0
    vae_rows = lambda: [r for r in (pretrained / "pretrain_log.csv").read_text().splitlines() if r.startswith("vae,")]  # noqa: E731
    before = vae_rows()
    weights = (pretrained / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    (pretrained / "pretrain_log.csv").unlink()  # Snakemake removes a job's outputs before rerunning it
    main(["pretrain", "--scale", "tiny", "--out", str(pretrained), "--data-cache", str(openmoji_cache),
          "--vae-steps", "3", "--unet-steps", "4", "--no-progress"])
    assert vae_rows() == before and before  # not retrained, logged once, from the stage's own log
    assert (pretrained / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert json.loads((pretrained / "pretrain_config.json").read_text())["unet_steps"] == 4


def test_a_crash_in_the_unet_stage_resumes_from_its_checkpoint_to_the_same_weights(openmoji_cache, tmp_path,
                                                                                   monkeypatch):
    from nabla.models import tiny

    config = tmp_path / "prior.yaml"
    config.write_text("checkpoint_every: 2\nunet_batch_size: 4\nvae_batch_size: 4\n")
    args = ["--data-cache", str(openmoji_cache), "--vae-steps", "2", "--unet-steps", "5", "--config", str(config),
            "--no-progress"]
    main(["pretrain", "--scale", "tiny", "--out", str(tmp_path / "whole"), *args])

    calls = [0]
    weight = tiny.min_snr_weight

    def killed_at_step_4(*a):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt  # after the checkpoint of step 2, before step 4 ends
        return weight(*a)

    monkeypatch.setattr(tiny, "min_snr_weight", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        main(["pretrain", "--scale", "tiny", "--out", str(tmp_path / "split"), *args])
    assert json.loads((tmp_path / "split" / "unet_stage" / "checkpoint" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(tiny, "min_snr_weight", weight)
    main(["pretrain", "--scale", "tiny", "--out", str(tmp_path / "split"), *args])
    assert calls[0] == 4  # the resumed run did not train steps 1-2 again (the patch counted only those)
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = (load_file(str(tmp_path / run / name)) for run in ("whole", "split"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    logs = [(tmp_path / run / "pretrain_log.csv").read_text().splitlines() for run in ("whole", "split")]
    steps = lambda rows: [r.split(",")[:2] for r in rows]  # noqa: E731  (the seconds differ)
    assert steps(logs[0]) == steps(logs[1])  # every step logged once
