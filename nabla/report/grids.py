"""Labelled image grids: one row per prompt, one column per seed."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → uint8 in [0, 255], rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def image_grid(
    images: torch.Tensor,
    row_labels: Sequence[str],
    upscale: int = 3,
    label_width: int = 150,
    footer: str | None = None,
) -> Image.Image:
    """Tile (rows·cols, 3, H, W) images in [0, 1], row-major, with a text label left of each row.

    Images are upscaled by nearest neighbour so 32×32 samples stay crisp and readable.
    """
    rows = len(row_labels)
    if len(images) % rows:
        raise ValueError(f"{len(images)} images do not fill {rows} rows")
    cols = len(images) // rows
    pixels = _uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    h, w = pixels.shape[1] * upscale, pixels.shape[2] * upscale
    pad, footer_height = 2, 16 if footer else 0
    canvas = Image.new("RGB", (label_width + cols * (w + pad), rows * (h + pad) + footer_height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, label in enumerate(row_labels):
        draw.text((4, r * (h + pad) + h // 2 - 6), label, fill="black", font=font)
        for c in range(cols):
            tile = Image.fromarray(np.ascontiguousarray(pixels[r * cols + c])).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (w + pad), r * (h + pad)))
    if footer:
        draw.text((4, rows * (h + pad) + 2), footer, fill="dimgray", font=font)
    return canvas


def save_grid(images: torch.Tensor, row_labels: Sequence[str], path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, row_labels, **kwargs).save(path)
    return path


def png_base64(images: torch.Tensor) -> str:
    """(N, 3, H, W) images in [0, 1] as one row of tiles, a PNG in base64 (small enough for JSON)."""
    pixels = _uint8(images).permute(2, 0, 3, 1).cpu().numpy()
    strip = np.ascontiguousarray(pixels.reshape(pixels.shape[0], -1, 3))  # H × (N·W) × 3
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def from_png_base64(text: str, count: int) -> torch.Tensor:
    """Inverse of ``png_base64``: the `count` tiles, (count, 3, H, W) in [0, 1]."""
    strip = np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))
    tiles = strip.reshape(strip.shape[0], count, -1, 3).transpose(1, 3, 0, 2)
    return torch.from_numpy(np.ascontiguousarray(tiles)).float() / 255
