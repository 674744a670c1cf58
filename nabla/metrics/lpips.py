"""LPIPS v0.1 (Zhang et al., 2018) on AlexNet, as a feature map: LPIPS(x, y) = ‖φ(x) − φ(y)‖².

LPIPS takes AlexNet's five ReLU outputs f_l (C_l × H_l × W_l) of each image (inputs mapped from
[0, 1] to [−1, 1], then shifted and scaled per channel), unit-normalises every spatial position's
channel vector, weighs the squared differences per channel by learned w_l ≥ 0 (the "linear" heads,
1×1 convolutions), averages over space and sums over layers. Since every w is non-negative that
equals a squared Euclidean distance between φ(x) = concat_l √(w_l / (H_l W_l)) ⊙ f̂_l(x), so LPIPS
diversity runs through the feature interface of the other extractors, with squared Euclidean in
place of cosine distances. φ has ~2.7M entries per 512×512 image; it is moved to the CPU.

Weights: torchvision's ImageNet AlexNet (``features.*``) and the lpips package's v0.1 heads
(``lin{l}.model.1.weight``), each one file from its URL (``fetch-models``), or ``lpips=DIR`` holding
both files under their published names. torchvision itself is not needed.
"""

from __future__ import annotations


import torch
from torch import nn

from nabla.hub import UrlModel, check_available

ALEXNET = UrlModel("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                   purpose="LPIPS trunk: torchvision's ImageNet AlexNet")
HEADS = UrlModel("https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",
                 purpose="LPIPS v0.1 linear heads for AlexNet")
#: LPIPS' input scaling layer: (x − shift) / scale on inputs in [−1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: indices in AlexNet's ``features`` of the convolutions whose ReLU outputs LPIPS compares
TAPS = (0, 3, 6, 8, 10)
EPS = 1e-10  # LPIPS' normalisation: f / (‖f‖ + eps)


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional trunk, with torchvision's layer indices (so its state dict loads)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


class LpipsFeatures(nn.Module):
    """φ(x) for images in [0, 1], (B, 3, H, W) → (B, D) on the CPU; LPIPS(x, y) = ‖φ(x) − φ(y)‖²."""

    name = "lpips"
    distance = "squared_euclidean"

    def __init__(self, model: str | None = None):
        super().__init__()
        trunk_path, heads_path = check_available(self.required_models(model)).values()
        self.trunk = alexnet_features()
        trunk = torch.load(trunk_path, map_location="cpu", weights_only=True)
        self.trunk.load_state_dict({k.removeprefix("features."): v for k, v in trunk.items() if k.startswith("features.")})
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        weights = [heads[f"lin{l}.model.1.weight"].flatten() for l in range(len(TAPS))]
        if any((w < 0).any() for w in weights):
            raise ValueError(f"{heads_path}: LPIPS heads must be non-negative (as trained)")
        for l, w in enumerate(weights):
            self.register_buffer(f"head{l}", w.float())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @staticmethod
    def required_models(model: str | None = None) -> list:
        return [ALEXNET, HEADS] if model is None else [f.in_folder(model) for f in (ALEXNET, HEADS)]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() * 2 - 1) - self.shift) / self.scale
        parts = []
        for index, layer in enumerate(self.trunk):
            x = layer(x)
            if isinstance(layer, nn.ReLU) and index - 1 in TAPS:
                head = getattr(self, f"head{TAPS.index(index - 1)}")
                unit = x / (x.norm(dim=1, keepdim=True) + EPS)
                weight = (head / (x.shape[2] * x.shape[3])).sqrt().view(1, -1, 1, 1)
                parts.append((unit * weight).flatten(1).cpu())
        return torch.cat(parts, dim=1)


def lpips_distance(features: LpipsFeatures, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS between paired images (B, 3, H, W) in [0, 1], shape (B,)."""
    return (features(a) - features(b)).square().sum(dim=1)
