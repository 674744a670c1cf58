"""The tiny Stable-Diffusion-shaped prior, pretrained by the workflow on OpenMoji at 32×32, on CPU.

It is a real `StableDiffusionPipeline` (AutoencoderKL, CLIPTextModel + CLIPTokenizer,
UNet2DConditionModel, DDIM scheduler) saved in diffusers format, so every method runs through the
same SD code path as at the paper's scale. Pretraining has two stages:

1. the VAE (32×32 RGB → 4×16×16 latents), reconstruction + a small KL term; the latent scaling
   factor is then set from the latents' standard deviation, as SD does;
2. the UNet with the text encoder trained jointly (ε-prediction, min-SNR-γ weighting, EMA), on
   captions with word dropout so that short prompts ("cat", "heart") stand for every emoji whose
   caption contains them, and prompt dropout so that classifier-free guidance works.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from nabla.checkpoint import CsvLog, optimizer_from_files, optimizer_to_files, replace_folder
from nabla.data import openmoji, prompts
from nabla.models.tokenizer import caption_words, write_word_tokenizer
from nabla.options import Checked, problem


@dataclass
class TinyPriorConfig(Checked):
    """Everything that defines a tiny prior; saved beside it as pretrain_config.json."""

    seed: int = 0
    image_size: int = 32
    words: tuple[str, ...] = prompts.TRAIN_WORDS
    heldout_fraction: float = 0.1
    # VAE
    # (16, 32) decodes at a quarter of (32, 64)'s FLOPs, 2.7x faster here, for 0.65 dB of held-out
    # PSNR (20.6 against 21.3); every reward-gradient method backpropagates through this decoder
    vae_channels: tuple[int, ...] = (16, 32)
    vae_steps: int = 500
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # text encoder
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_prompt_tokens: int = 16
    # UNet
    # (16, 32, 64): 2.5x fewer FLOPs than (32, 64, 64), a 2.1x faster sampling forward and 1.5x
    # faster training step here, so 2200 steps fit where 950 did; results/tiny/prior_quality.md
    unet_channels: tuple[int, ...] = (16, 32, 64)
    unet_layers_per_block: int = 1
    # Cross-attention at 8x8 and 4x4 (and the mid block), diffusers' 8 heads. Attention at 4x4 alone
    # with 2 heads makes updates ~2x cheaper at the same prior quality, but the rank-8 attention
    # LoRA then gains 2-6x less reward per training second (README, "not taken";
    # config/tiny-attn4.yaml runs the default's comparison on it)
    unet_attention_levels: int = 2  # the lowest-resolution levels with cross-attention blocks
    unet_attention_heads: int = 8  # diffusers' attention_head_dim, which is the head count
    unet_steps: int = 2200
    unet_batch_size: int = 48
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    word_keep_prob: float = 0.5
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    log_every: int = 25
    checkpoint_every: int = 100  # UNet steps between the stage's checkpoints (a crash resumes from the last)

    def problems(self) -> list[str]:
        n, k, heads = len(self.unet_channels), self.unet_attention_levels, self.unet_attention_heads
        found = []
        if not 0 <= k <= n:
            found.append(problem("unet_attention_levels", k, f"must be in [0, {n}] for {n} UNet levels"))
        # the mid block attends too, at the last level's width
        widths = sorted({self.unet_channels[-1], *self.unet_channels[n - min(max(k, 0), n):]})
        if heads < 1 or any(w % heads for w in widths):
            found.append(problem("unet_attention_heads", heads, f"must divide the attention blocks' widths {widths}"))
        return found


# -- model builders -----------------------------------------------------------------------------
def build_vae(cfg: TinyPriorConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, cfg.vae_channels[0]),
        sample_size=cfg.image_size,
    )


def build_text_encoder(cfg: TinyPriorConfig, tokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_prompt_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet(cfg: TinyPriorConfig, latent_size: int) -> UNet2DConditionModel:
    n, k = len(cfg.unet_channels), cfg.unet_attention_levels
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=cfg.unet_channels,
        down_block_types=("DownBlock2D",) * (n - k) + ("CrossAttnDownBlock2D",) * k,
        up_block_types=("CrossAttnUpBlock2D",) * k + ("UpBlock2D",) * (n - k),
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_attention_heads,
        norm_num_groups=min(32, cfg.unet_channels[0]),
    )


def ddim_scheduler(cfg: TinyPriorConfig) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


# -- data ---------------------------------------------------------------------------------------
def training_set(cfg: TinyPriorConfig, cache: Path, heldout: bool = False) -> openmoji.OpenMojiSet:
    """The training (or held-out) split restricted to emoji whose caption holds a prompt word."""
    dataset = openmoji.load_openmoji(cache, size=cfg.image_size)
    splits = openmoji.split(dataset, heldout_fraction=cfg.heldout_fraction, seed=cfg.seed)
    return openmoji.tiny_subset(splits[1] if heldout else splits[0], cfg.words)


def word_balanced_weights(captions: list[str], words: tuple[str, ...]) -> torch.Tensor:
    """Sampling weight per image so that every prompt word is drawn equally often.

    Without it "flag" (~60% of the subset) would crowd out the words with a dozen images.
    An image under several words takes the weight of its rarest one.
    """
    coverage = prompts.prompt_coverage(words, captions)
    weights = [
        max(1.0 / coverage[w] for w in words if prompts.has_word(caption, w)) for caption in captions
    ]
    return torch.tensor(weights, dtype=torch.float64)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1] (the VAE's range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# -- training -----------------------------------------------------------------------------------
def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_vae(
    cfg: TinyPriorConfig, images: torch.Tensor, weights: torch.Tensor, log: CsvLog, progress: bool = True
) -> AutoencoderKL:
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(50, cfg.vae_steps))
    start = time.perf_counter()
    bar = tqdm(range(cfg.vae_steps), desc="VAE", disable=not progress)
    for step in bar:
        batch = images[torch.multinomial(weights, cfg.vae_batch_size, replacement=True, generator=generator)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(recon, batch) + cfg.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log.write({"stage": "vae", "step": step, "loss": f"{loss.item():.6g}", "seconds": f"{time.perf_counter() - start:.2f}"})
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256):
    """Posterior mean and std of every image (sampled from afresh at each UNet step)."""
    means, stds = [], []
    for chunk in images.split(batch_size):
        dist = vae.encode(chunk).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, γ)/SNR: the ε-prediction loss weight of Hang et al. (2023)."""
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return snr.clamp(max=gamma) / snr


class UNetStage:
    """The UNet + text encoder stage's state, checkpointed so that a killed pretraining resumes
    at its last checkpoint and ends at the weights an uninterrupted run ends at.

    Everything random is drawn from ``generator`` (torch) and ``rng`` (numpy), both saved; the
    models, their EMA copies, the optimiser and the learning-rate schedule are saved beside them in
    ``<out>/unet_stage/checkpoint`` (safetensors + state.json), written atomically.
    """

    def __init__(self, cfg: TinyPriorConfig, latent_size: int, tokenizer):
        torch.manual_seed(cfg.seed + 1)
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.unet = build_unet(cfg, latent_size)
        self.text_encoder = build_text_encoder(cfg, tokenizer)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.ema_params = list(self.ema_unet.parameters()) + list(self.ema_text.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.unet_lr, weight_decay=1e-2)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg.warmup_steps, cfg.unet_steps))
        self.step = 0

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder, "ema_unet": self.ema_unet, "ema_text": self.ema_text}

    def save(self, folder: Path, config: dict) -> None:
        def write(tmp: Path) -> None:
            save_file({f"{name}.{k}": v.contiguous() for name, m in self.modules().items() for k, v in m.state_dict().items()},
                      str(tmp / "models.safetensors"))
            tensors, meta = optimizer_to_files(self.optimizer)
            save_file({**tensors, "generator": self.generator.get_state()}, str(tmp / "optimizer.safetensors"))
            (tmp / "state.json").write_text(json.dumps({
                "config": config, "step": self.step, "optimizer": meta, "schedule": self.schedule.state_dict(),
                "rng": self.rng.bit_generator.state,
            }))

        replace_folder(folder, write)

    def load(self, folder: Path, config: dict) -> bool:
        """Resume from ``folder`` if it holds a checkpoint of this config."""
        if not (folder / "state.json").exists():
            return False
        state = json.loads((folder / "state.json").read_text())
        if state["config"] != config:
            return False
        models = load_file(str(folder / "models.safetensors"))
        for name, module in self.modules().items():
            module.load_state_dict({k[len(name) + 1:]: v for k, v in models.items() if k.startswith(f"{name}.")})
        tensors = load_file(str(folder / "optimizer.safetensors"))
        self.generator.set_state(tensors.pop("generator"))
        self.optimizer.load_state_dict(optimizer_from_files(tensors, state["optimizer"]))
        self.schedule.load_state_dict(state["schedule"])
        self.rng.bit_generator.state = state["rng"]
        self.step = state["step"]
        return True


def train_unet(
    cfg: TinyPriorConfig,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    captions: list[str],
    weights: torch.Tensor,
    tokenizer,
    stage_dir: Path,
    config: dict,
    progress: bool = True,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Train the UNet and text encoder (from the stage's last checkpoint in ``stage_dir``, if one
    of this ``config`` is there); log to ``stage_dir/losses.csv``; return the EMA models."""
    stage = UNetStage(cfg, latent_mean.shape[-1], tokenizer)
    resumed = stage.load(stage_dir / "checkpoint", config)
    log = CsvLog(stage_dir / "losses.csv", stage.step if resumed else None, key="step")
    scheduler = ddim_scheduler(cfg)
    alphas_cumprod = scheduler.alphas_cumprod
    word_set = set(cfg.words)
    start = time.perf_counter()
    bar = tqdm(range(stage.step, cfg.unet_steps), desc="UNet", disable=not progress)
    for step in bar:
        index = torch.multinomial(weights, cfg.unet_batch_size, replacement=True, generator=stage.generator)
        x0 = latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=stage.generator)
        texts = [
            "" if stage.rng.random() < cfg.prompt_dropout
            else openmoji.word_dropout(captions[i], stage.rng, keep_prob=cfg.word_keep_prob, prompt_words=word_set)
            for i in index.tolist()
        ]
        ids = tokenizer(
            texts, padding="max_length", max_length=cfg.max_prompt_tokens, truncation=True, return_tensors="pt"
        ).input_ids
        t = torch.randint(cfg.num_train_timesteps, (cfg.unet_batch_size,), generator=stage.generator)
        noise = torch.randn(x0.shape, generator=stage.generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # The math kernel: CPU flash attention is slower at these 8-wide heads (~7% of a step).
        with sdpa_kernel(SDPBackend.MATH):
            eps = stage.unet(x_t, t, encoder_hidden_states=stage.text_encoder(ids)[0]).sample
            per_sample = (eps - noise).pow(2).mean(dim=(1, 2, 3))
            loss = (min_snr_weight(alphas_cumprod, t, cfg.min_snr_gamma) * per_sample).mean()
            stage.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.params, 1.0)
        stage.optimizer.step()
        stage.schedule.step()
        # EMA warms up (decay grows from 0) so early steps are not averaged with the random init.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(stage.ema_params, [p.detach() for p in stage.params], 1 - decay)
        stage.step = step + 1
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            log.write({"stage": "unet", "step": step, "loss": f"{loss.item():.6g}",
                       "seconds": f"{time.perf_counter() - start:.2f}"})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if stage.step % cfg.checkpoint_every == 0 or stage.step == cfg.unet_steps:
            stage.save(stage_dir / "checkpoint", config)
    return stage.ema_unet.eval(), stage.ema_text.eval()


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """PSNR (dB, images in [0, 1]) of the VAE's mean reconstruction."""
    recon = vae.decode(vae.encode(images).latent_dist.mean).sample
    mse = F.mse_loss((recon.clamp(-1, 1) + 1) / 2, (images + 1) / 2).item()
    return 10 * math.log10(1 / mse)


VAE_KEYS = ("seed", "image_size", "words", "heldout_fraction", "vae_channels", "vae_steps", "vae_batch_size", "vae_lr", "vae_kl_weight")


def _vae_settings(cfg: TinyPriorConfig) -> dict:
    return {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k in VAE_KEYS}


def finished_vae_stage(cfg: TinyPriorConfig, out: Path) -> bool:
    """Whether `out` holds a VAE that an earlier run of the same VAE settings finished."""
    marker = out / "vae_stage.json"
    return marker.exists() and json.loads(marker.read_text())["config"] == _vae_settings(cfg)


def vae_stage(cfg: TinyPriorConfig, out: Path, images, weights, heldout_images, progress: bool):
    """Train the VAE, or reuse the one a previous (interrupted) run of the same config finished.

    The stage keeps its own loss log (vae_stage/losses.csv), so a rerun's log still holds it.
    """
    if not finished_vae_stage(cfg, out):
        vae = train_vae(cfg, images, weights, CsvLog(out / "vae_stage" / "losses.csv", None), progress)
        vae.save_pretrained(out / "vae_stage")
        psnr = reconstruction_psnr(vae, heldout_images) if len(heldout_images) else float("nan")
        (out / "vae_stage.json").write_text(
            json.dumps({"config": _vae_settings(cfg), "heldout_psnr_db": round(psnr, 2)}, indent=1)
        )
    return AutoencoderKL.from_pretrained(out / "vae_stage").eval().requires_grad_(False)


def pretrain_tiny_prior(cfg: TinyPriorConfig, out: str | Path, data_cache: str | Path, progress: bool = True) -> Path:
    """Pretrain the tiny prior and save it as a diffusers folder at `out`. A finished VAE stage is
    reused, and the UNet stage resumes from its last checkpoint (both only for the same config)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    data = training_set(cfg, Path(data_cache))
    heldout = training_set(cfg, Path(data_cache), heldout=True)
    images = to_tensor(data.images)
    weights = word_balanced_weights(data.captions, cfg.words)
    tokenizer = write_word_tokenizer(caption_words(data.captions), out / "tokenizer", cfg.max_prompt_tokens)
    vae = vae_stage(cfg, out, images, weights, to_tensor(heldout.images), progress)
    mean, std = encode_latents(vae, images)
    # SD scales latents to unit variance; measure it rather than reuse SD's 0.18215.
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    unet, text_encoder = train_unet(cfg, mean * scaling, std * scaling, data.captions, weights, tokenizer,
                                    out / "unet_stage", json.loads(json.dumps(asdict(cfg))), progress)
    # the log of both stages: the VAE's (kept by its stage) and the UNet's (every step once)
    lines = [(out / name).read_text().splitlines() for name in ("vae_stage/losses.csv", "unet_stage/losses.csv")]
    (out / "pretrain_log.csv").write_text("\n".join(lines[0] + lines[1][1:]) + "\n")
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=ddim_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out, safe_serialization=True)
    return out
