"""A learned reward for the tiny scale: a small CNN that recognises the prompt words in emoji.

:class:`EmojiClassifier` is a multi-label classifier over the tiny prior's vocabulary
(``TRAIN_WORDS``): an emoji's labels are the words its caption holds. It is trained on the
same OpenMoji train split the prior saw (:func:`train_emoji_classifier`), and the reward
``emoji_class`` scores an image by log p(category | image) = log σ(logit_category), or, with
``category="prompt"``, by the log-probability of each sample's own prompt word (text–image
alignment, the role ImageReward plays at the paper's scale).

Files in a model folder: ``emoji_classifier.safetensors`` (weights) and
``emoji_classifier.json`` (class names, architecture, training settings and metrics).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from nabla.data import openmoji
from nabla.data.prompts import TRAIN_WORDS, has_word
from nabla.hub import LocalFolder
from nabla.rewards.base import Reward, register_reward

WEIGHTS_FILE = "emoji_classifier.safetensors"
META_FILE = "emoji_classifier.json"
#: the prior's split (TinyPriorConfig defaults), so held-out emoji are unseen by both models
HELDOUT_FRACTION = 0.1
SPLIT_SEED = 0


# -- model --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture: one block per width, each halving the resolution (32 → 16 → 8 → 4).

    A block is a stride-2 3×3 conv then ``convs_per_block − 1`` more 3×3 convs, each followed by
    GroupNorm and SiLU. Strided convs rather than conv + pooling: as accurate here at a third of
    the CPU time (pooling and activations at full resolution dominated).
    """

    classes: tuple[str, ...] = TRAIN_WORDS
    widths: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 2
    groups: int = 8
    image_size: int = 32


class EmojiClassifier(nn.Module):
    """Images (B, 3, H, W) in [0, 1] → one logit per class, (B, len(classes))."""

    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        channels = 3
        for width in cfg.widths:
            for i in range(cfg.convs_per_block):
                stride = 2 if i == 0 else 1
                layers += [
                    nn.Conv2d(channels, width, 3, stride, padding=1),
                    nn.GroupNorm(cfg.groups, width),
                    nn.SiLU(),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, len(cfg.classes))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.cfg.classes

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The globally averaged last feature map, (B, widths[-1]): position-independent."""
        size = self.cfg.image_size
        if images.shape[-2:] != (size, size):
            # other resolutions (e.g. decoded latents) are resampled to what the CNN was trained on
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return self.features(images * 2.0 - 1.0).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))


def save_emoji_classifier(model: EmojiClassifier, out_dir: str | os.PathLike, metadata: dict) -> Path:
    """Write the weights and the JSON (architecture + ``metadata``) to ``out_dir``; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    arch = asdict(model.cfg)
    meta = {"classes": list(arch.pop("classes")), "architecture": arch, **metadata}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return out


def classifier_folder(model_dir: str | os.PathLike, what: str, command: str, rule: str) -> LocalFolder:
    """A classifier folder as a :class:`~nabla.hub.LocalFolder`: the CLI ``command`` and the
    workflow's ``rule`` that build it (the learned reward's, or the evaluation features')."""
    return LocalFolder(str(model_dir), WEIGHTS_FILE, what,
                       f"build it with `python -m nabla {command} --out {model_dir}` (the workflow's rule {rule})")


def load_emoji_classifier(model_dir: str | os.PathLike) -> EmojiClassifier:
    """The classifier saved in ``model_dir``, frozen and in eval mode."""
    folder = Path(model_dir)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / META_FILE).is_file():
        raise FileNotFoundError(
            f"no emoji classifier in {folder} ({WEIGHTS_FILE} and {META_FILE} expected); "
            f"train one with: python -m nabla train-reward --out {folder}"
        )
    meta = json.loads((folder / META_FILE).read_text())
    arch = meta["architecture"]
    cfg = ClassifierConfig(
        classes=tuple(meta["classes"]),
        widths=tuple(arch["widths"]),
        convs_per_block=arch["convs_per_block"],
        groups=arch["groups"],
        image_size=arch["image_size"],
    )
    model = EmojiClassifier(cfg)
    model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    return model.requires_grad_(False).eval()


# -- data ---------------------------------------------------------------------------------------
def classifier_splits(
    data_cache: str | os.PathLike, classes: Sequence[str] = TRAIN_WORDS
) -> tuple[openmoji.OpenMojiSet, openmoji.OpenMojiSet]:
    """(train, held-out): the emoji showing one of ``classes``, split as the prior splits them."""
    covered = openmoji.tiny_subset(openmoji.load_openmoji(data_cache), classes)
    return openmoji.split(covered, heldout_fraction=HELDOUT_FRACTION, seed=SPLIT_SEED)


def to_images(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [0, 1] (the rewards' image range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def multi_hot(captions: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """(N, C) float targets: 1 where the caption holds the class word."""
    return torch.tensor([[float(has_word(c, w)) for w in classes] for c in captions])


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels per axis, filling with white."""
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=1.0)  # emoji sit on white
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Light augmentation: shifts, per-channel gain/offset jitter and a little pixel noise.

    Why: the reward's gradient is followed by a sampler; a classifier that has only seen exact
    renders can be swayed by a few pixels, one trained on perturbed renders much less so.
    """
    b = images.shape[0]
    x = random_shift(images, max_shift, generator)
    gain = 1.0 + 0.1 * (2 * torch.rand(b, 3, 1, 1, generator=generator) - 1)
    offset = 0.05 * (2 * torch.rand(b, 3, 1, 1, generator=generator) - 1)
    noise = 0.02 * torch.randn(x.shape, generator=generator)
    return (x * gain + offset + noise).clamp(0.0, 1.0)


# -- training -----------------------------------------------------------------------------------
@torch.no_grad()
def top1_accuracy(
    model: EmojiClassifier, images: torch.Tensor, targets: torch.Tensor
) -> tuple[float, dict[str, list[int]]]:
    """Top-1 accuracy (the highest logit is one of the image's words) and, per class,
    [correct, total] over the images showing it."""
    hit = targets.gather(1, model(images).argmax(dim=1, keepdim=True)).squeeze(1) > 0
    per_class = {
        word: [int(hit[targets[:, k] > 0].sum()), int((targets[:, k] > 0).sum())]
        for k, word in enumerate(model.classes)
    }
    return float(hit.float().mean()) if len(hit) else math.nan, per_class


def train_emoji_classifier(
    data_cache: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 3e-3,
    progress: bool = False,
    classes: Sequence[str] = TRAIN_WORDS,
) -> Path:
    """Train the classifier on the prior's train split and save it to ``out_dir`` (returned).

    ``classes`` are its words (default: the prior's prompt words, as the reward needs); the emoji
    it trains on are those whose caption holds one of them.

    Batches are drawn word-balanced ("flag" is ~60% of the emoji, "chess" 2%), targets are
    multi-hot with a binary cross-entropy per word, and the learning rate follows a one-cycle
    schedule. ``seed`` seeds the initialisation and the batches; the split is fixed (the prior's).
    """
    from nabla.models.tiny import word_balanced_weights  # lazy: pulls in diffusers

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cfg = ClassifierConfig(classes=tuple(classes))
    train_set, heldout_set = classifier_splits(data_cache, cfg.classes)
    images, targets = to_images(train_set.images), multi_hot(train_set.captions, cfg.classes)
    weights = word_balanced_weights(train_set.captions, cfg.classes)

    model = EmojiClassifier(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for step in range(steps):
        index = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        logits = model(augment(images[index], generator))
        loss = F.binary_cross_entropy_with_logits(logits, targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress and (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps}  loss {np.mean(losses[-100:]):.4f}", flush=True)

    model.eval()
    heldout_acc, per_class = top1_accuracy(
        model, to_images(heldout_set.images), multi_hot(heldout_set.captions, cfg.classes)
    )
    train_acc, _ = top1_accuracy(model, images, targets)
    metrics = {
        # the last tenth of the run, on augmented word-balanced batches
        "final_train_loss": float(np.mean(losses[-max(1, steps // 10) :])),
        "train_accuracy": train_acc,
        "heldout_accuracy": heldout_acc,
        "heldout_per_class": per_class,
        "train_size": len(train_set),
        "heldout_size": len(heldout_set),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    training = {
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "heldout_fraction": HELDOUT_FRACTION, "split_seed": SPLIT_SEED,
    }
    return save_emoji_classifier(model, out_dir, {"training": training, "metrics": metrics})


# -- reward -------------------------------------------------------------------------------------
@register_reward
class EmojiClass(Reward):
    """log p(category | image) under the emoji classifier in ``model_dir``.

    ``category`` is a class word (default "heart") or "prompt": each sample is then scored by
    its own prompt word, which must be one of the classifier's words.
    """

    name = "emoji_class"
    scales = ("tiny",)

    def __init__(self, model_dir: str | os.PathLike, category: str = "heart"):
        super().__init__()
        self.classifier = load_emoji_classifier(model_dir)
        if category != "prompt":
            self.class_index(category)  # fail at construction, not at the first batch
        self.category = category

    def class_index(self, word: str) -> int:
        classes = self.classifier.classes
        if word not in classes:
            raise ValueError(
                f"{word!r} is not an emoji_class category; known: {', '.join(classes)} (or 'prompt')"
            )
        return classes.index(word)

    def forward(self, samples: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        weight = self.classifier.head.weight
        # half-precision decodes would not run through float32 convs: cast (differentiably)
        logits = self.classifier(samples.to(weight.dtype))
        log_probs = F.logsigmoid(logits)  # (B, C); log σ, not log(σ), is stable for large |logit|
        if self.category == "prompt":
            if prompts is None or len(prompts) != len(samples):
                raise ValueError("emoji_class with category='prompt' needs one prompt per sample")
            words = [p.strip() for p in prompts]
        else:
            words = [self.category] * len(samples)
        index = torch.tensor([self.class_index(w) for w in words], device=log_probs.device)
        return log_probs.gather(1, index[:, None]).squeeze(1)

    @staticmethod
    def local_folders(model_dir: str | os.PathLike | None = None, category: str = "heart") -> list[LocalFolder]:
        return [] if model_dir is None else [
            classifier_folder(model_dir, "the emoji_class reward's classifier", "train-reward", "train_tiny_reward")]
