"""The SD backend on a tiny random pipeline: loading, guidance, LoRA semantics and files."""

import pytest
import torch
from diffusers import StableDiffusionPipeline

from nabla import sampling
from nabla.models.sd import LORA_FILE, ModelNotFoundError, SDBackend, load_pipeline


@pytest.fixture()
def backend(random_sd_dir):
    return SDBackend.from_pretrained(random_sd_dir)


def _perturb_lora(backend, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backend.lora_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))


def _inputs(backend, n=3):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((n, *backend.sample_shape), generator=generator)
    t = torch.tensor([999, 500, 20][:n])
    return x, t, backend.encode_prompts(["cat", "red heart", "face"][:n])


def test_missing_hub_model_names_the_id_and_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as error:
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    message = str(error.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message


def test_missing_local_folder_is_reported(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a diffusers model folder"):
        load_pipeline(tmp_path / "nope")


def test_loads_with_sd_offsets_and_frozen_weights(backend):
    config = backend.scheduler.config
    assert config.steps_offset == 1 and not config.set_alpha_to_one
    assert backend.sample_shape == (4, 16, 16)
    assert not any(p.requires_grad for p in backend.unet.parameters())


def test_guided_output_is_one_batched_call_equal_to_u_plus_w_c_minus_u(backend):
    x, t, cond = _inputs(backend)
    uncond = backend.null_condition(len(x))
    with torch.no_grad():
        u = backend.model_output(x, t, uncond)
        c = backend.model_output(x, t, cond)
        guided = backend.guided_output(x, t, cond, uncond, 5.0)
    torch.testing.assert_close(guided, u + 5.0 * (c - u), rtol=1e-4, atol=1e-5)


def test_the_guided_call_also_gives_the_conditional_output(backend):
    x, t, cond = _inputs(backend)
    uncond = backend.null_condition(len(x))
    with torch.no_grad():
        guided, conditional = backend.guided_and_conditional(x, t, cond, uncond, 5.0)
        torch.testing.assert_close(conditional, backend.model_output(x, t, cond), rtol=1e-5, atol=1e-5)
        assert torch.equal(guided, backend.guided_output(x, t, cond, uncond, 5.0))
        alone, same = backend.guided_and_conditional(x, t, cond, None, 5.0)  # no guidance: one output
        assert same is alone


def test_lora_starts_at_the_prior_and_toggles(backend):
    x, t, cond = _inputs(backend)
    with torch.no_grad():
        prior = backend.model_output(x, t, cond)
        backend.add_lora(rank=4, seed=0)
        assert backend.lora_parameters() and all(p.requires_grad for p in backend.lora_parameters())
        torch.testing.assert_close(backend.model_output(x, t, cond), prior)
        _perturb_lora(backend)
        tuned = backend.model_output(x, t, cond)
        assert (tuned - prior).abs().max() > 1e-4
        with backend.adapter(False):
            torch.testing.assert_close(backend.model_output(x, t, cond), prior)
        torch.testing.assert_close(backend.model_output(x, t, cond), tuned)


def test_lora_save_load_round_trip_in_diffusers_format(backend, random_sd_dir, tmp_path):
    x, t, cond = _inputs(backend)
    backend.add_lora(rank=4, seed=0)
    _perturb_lora(backend)
    with torch.no_grad():
        tuned = backend.model_output(x, t, cond)
    path = backend.save_lora(tmp_path)
    assert path == tmp_path / LORA_FILE and path.exists()

    fresh = SDBackend.from_pretrained(random_sd_dir)
    fresh.add_lora(rank=4, seed=123)  # a different init: loading must overwrite it
    fresh.load_lora(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh.model_output(x, t, cond), tuned)

    # diffusers' own loader reads the same file.
    pipe = StableDiffusionPipeline.from_pretrained(random_sd_dir, local_files_only=True, safety_checker=None)
    pipe.load_lora_weights(tmp_path)
    with torch.no_grad():
        out = pipe.unet(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(out, tuned, rtol=1e-4, atol=1e-5)


def test_decode_maps_to_unit_interval(backend):
    with torch.no_grad():
        images = backend.decode(torch.randn(2, *backend.sample_shape))
    assert images.shape == (2, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1


def test_deterministic_sampler_matches_the_diffusers_pipeline(backend, random_sd_dir):
    """η = 0 removes step noise, so our rollout must equal StableDiffusionPipeline.__call__."""
    prompts, seeds = ["cat", "red heart"], [3, 4]
    ours = sampling.rollout(backend, prompts, seeds, num_steps=5, eta=0.0, guidance_scale=4.0)
    x_T = sampling.trajectory_noise(seeds, 5, backend.sample_shape, "cpu", torch.float32)[0]
    pipe = StableDiffusionPipeline.from_pretrained(random_sd_dir, local_files_only=True, safety_checker=None)
    pipe.scheduler = backend.scheduler
    theirs = pipe(
        prompts, num_inference_steps=5, guidance_scale=4.0, eta=0.0, latents=x_T.clone(),
        output_type="latent", height=32, width=32,
    ).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sample_noise_depends_only_on_the_seed(backend):
    alone = sampling.rollout(backend, ["cat"], [7], num_steps=3, eta=1.0, guidance_scale=2.0)
    batched = sampling.rollout(backend, ["face", "cat"], [1, 7], num_steps=3, eta=1.0, guidance_scale=2.0)
    torch.testing.assert_close(batched[1:], alone, rtol=1e-5, atol=1e-5)


def test_recorded_trajectory_has_what_training_needs(backend):
    traj = sampling.rollout(backend, ["cat", "face"], [0, 1], num_steps=4, eta=1.0, guidance_scale=3.0, record=True)
    assert traj.latents.shape == (5, 2, 4, 16, 16)
    assert traj.model_outputs.shape == (4, 2, 4, 16, 16)
    assert traj.log_probs.shape == (4, 2) and torch.isfinite(traj.log_probs).all()
    assert traj.prev_timesteps[-1] < 0 and traj.timesteps[0] > traj.timesteps[-1]


def sd_trainer(model, out, **overrides):
    from nabla.config import TrainConfig
    from nabla.trainer import Trainer

    values = dict(
        scale="tiny", model=str(model), method="residual_nabla_db", reward="colorfulness", rounds=1,
        trajectories_per_round=4, sampler={"num_steps": 4, "eta": 1.0, "guidance_scale": 3.0}, prompts=["cat", "heart"],
        eval_prompts=["cat"], eval_samples_per_prompt=2, eval_every=0, eval_splits=[], lora_rank=2,
        method_options={"transition_fraction": 0.5, "microbatch_size": 8, "flow_channels": [8, 16],
                        "train_on_previous_round": False, "reward_scale": 100.0, "updates_per_round": 1},
    )
    values.update(overrides)
    return Trainer(TrainConfig(**values), out, progress=False)


def test_bfloat16_frozen_parts_keep_lora_vae_and_losses_in_float32(random_sd_dir, tmp_path):
    trainer = sd_trainer(random_sd_dir, tmp_path / "run", frozen_dtype="bfloat16")
    backend = trainer.backend
    assert backend.unet.conv_in.weight.dtype == torch.bfloat16 and backend.text_encoder.dtype == torch.bfloat16
    assert backend.vae.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in backend.lora_parameters())
    assert backend.encode_prompts(["cat"]).dtype == torch.float32
    before = [p.detach().clone() for p in backend.lora_parameters()]
    summary = trainer.run()
    assert summary["updates"] == 1 and "diverged_at" not in summary
    assert any(not torch.equal(a, p) for a, p in zip(before, backend.lora_parameters()))


def test_gradient_checkpointing_gives_the_same_gradients(random_sd_dir, tmp_path):
    grads = []
    for checkpointing in (False, True):
        trainer = sd_trainer(random_sd_dir, tmp_path / f"run{checkpointing}", gradient_checkpointing=checkpointing)
        with torch.no_grad():
            for i, p in enumerate(trainer.backend.lora_parameters()):
                p.copy_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        calls = []
        for module in trainer.backend.unet.modules():  # count the recomputed blocks
            if getattr(module, "gradient_checkpointing", False):
                inner = module._gradient_checkpointing_func
                module._gradient_checkpointing_func = lambda *a, inner=inner, **k: calls.append(1) or inner(*a, **k)
        batch = trainer._collect()
        micro = trainer.method.plan(batch, torch.Generator().manual_seed(0))[0][0]
        trainer.method.loss(micro).loss.backward()
        grads.append([p.grad.clone() for p in trainer.backend.lora_parameters()])
        assert bool(calls) == checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
