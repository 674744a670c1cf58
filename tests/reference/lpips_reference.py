"""Reference LPIPS values of the lpips package itself for ``tests/test_lpips.py``, which checks
:mod:`nabla.metrics.lpips` against them without lpips or torchvision installed.

lpips' AlexNet LPIPS v0.1 gets seeded weights (``seeded.seeded_state``; the linear heads' made
non-negative, as trained) and scores seeded image pairs; the key shapes and distances go to
``lpips_reference.json`` beside this file. Regenerate where lpips and torchvision import:
``pip install lpips && python tests/reference/lpips_reference.py``.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import torch

from seeded import seeded_state

OUTPUT = Path(__file__).with_name("lpips_reference.json")
REFERENCE = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else None


def seeded_lpips_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: v.abs() if k.startswith("lin") else v for k, v in seeded_state(shapes).items()}


def seeded_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three pairs of 64×64 images in [0, 1]; the third pair is one image twice (distance 0)."""
    a, b = torch.rand(2, 3, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    b[2] = a[2]
    return a, b


@torch.no_grad()
def main() -> None:
    import lpips

    model = lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True, verbose=False).eval()
    # lins.N is the same module as linN (listed twice in the state dict): keep one name
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith(("scaling_layer", "lins."))}
    missing = model.load_state_dict(seeded_lpips_state(shapes), strict=False).missing_keys
    assert all(k.startswith(("scaling_layer", "lins.")) for k in missing), missing
    a, b = seeded_pairs()
    out = {
        "lpips_version": importlib.metadata.version("lpips"),
        "torch_version": torch.__version__,
        "shapes": shapes,
        "distances": model(a, b, normalize=True).flatten().tolist(),
    }
    OUTPUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUTPUT}: {out['distances']}")


if __name__ == "__main__":
    main()
