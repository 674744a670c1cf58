"""Labelled image grids: one row per prompt, one column per seed."""

from __future__ import annotations

import base64
import io
import json
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
    """The grid as a PNG at `path`, and beside it (`path` with .json) the record it is drawn from
    (:func:`grid_record`), so that the grid redraws from the committed results alone
    (:func:`redraw_grid`), byte for byte, without the model that sampled it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = path.with_suffix(".json")
    record.write_text(json.dumps(grid_record(images, row_labels, **kwargs), indent=1) + "\n")
    return redraw_grid(record, path)


def grid_record(images: torch.Tensor, row_labels: Sequence[str], upscale: int = 3, label_width: int = 150,
                footer: str | None = None) -> dict:
    """What :func:`image_grid` draws, as JSON: each row's tiles a PNG strip (:func:`png_base64`, the
    uint8 pixels the grid shows), the labels, footer and layout."""
    rows = len(row_labels)
    if len(images) % rows:
        raise ValueError(f"{len(images)} images do not fill {rows} rows")
    cols = len(images) // rows
    return {"row_labels": list(row_labels), "columns": cols, "upscale": upscale, "label_width": label_width,
            "footer": footer, "rows": [png_base64(images[r * cols:(r + 1) * cols]) for r in range(rows)]}


def grid_from_record(record: dict) -> Image.Image:
    tiles = torch.cat([from_png_base64(row, record["columns"]) for row in record["rows"]])
    return image_grid(tiles, record["row_labels"], upscale=record["upscale"], label_width=record["label_width"],
                      footer=record["footer"])


def redraw_grid(record: str | Path, path: str | Path | None = None) -> Path:
    """The grid PNG from its record (by default beside it, with .png)."""
    record = Path(record)
    path = Path(path) if path else record.with_suffix(".png")
    grid_from_record(json.loads(record.read_text())).save(path)
    return path


def record_from_grid(path: str | Path, row_labels: Sequence[str], columns: int, upscale: int = 3,
                     label_width: int = 150, footer: str | None = None, pad: int = 2) -> dict:
    """The record of a grid PNG drawn by :func:`image_grid` (its tiles read back from the pixels:
    every ``upscale``-th one, nearest-neighbour upscaling keeps them exact); raises where the PNG is
    not such a grid. How a grid saved before records were written beside it gained its record."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    rows, tiles = len(row_labels), []
    size = (pixels.shape[0] - (16 if footer else 0)) // rows - pad
    for r in range(rows):
        for c in range(columns):
            top, left = r * (size + pad), label_width + c * (size + pad)
            block = pixels[top:top + size, left:left + size]
            tile = block[::upscale, ::upscale]
            if not (np.repeat(np.repeat(tile, upscale, 0), upscale, 1) == block).all():
                raise ValueError(f"{path}: tile ({r}, {c}) is not a {upscale}x nearest-neighbour upscale")
            tiles.append(tile)
    images = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255
    record = grid_record(images, row_labels, upscale=upscale, label_width=label_width, footer=footer)
    if not (np.asarray(grid_from_record(record)) == pixels).all():
        raise ValueError(f"{path}: its record does not redraw it (labels, footer or layout differ)")
    return record


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
