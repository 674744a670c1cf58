"""Data parallelism inside one job: `torchrun --nproc_per_node N python -m nabla train ...`.

Every rank samples its own share of a round (other seeds, other prompts) and computes gradients
on it; gradients are averaged across ranks before clipping, so all ranks take the same step and
hold the same weights. Rank 0 alone writes logs, evaluations and the shared checkpoint; what is
per rank (random state, a method's buffers, a pending batch) goes to one file per rank beside it.
Without torchrun (WORLD_SIZE unset or 1) every function here is the single-process identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs), once."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.startswith("cuda"):  # NCCL's object collectives use the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: str) -> str:
    """`cuda` becomes this rank's GPU (torchrun's LOCAL_RANK); anything else is kept."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over ranks (missing gradients count as 0)."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        p.grad = g.clone()


def any_rank(flag: bool, device: str = "cpu") -> bool:
    """Whether `flag` holds on some rank (every rank gets the same answer, so all stop together)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float], device: str = "cpu") -> dict[str, float]:
    """Each logged number averaged over ranks (equal batch sizes: the mean over the whole round)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / world_size()).tolist()))


def gather_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """The round's rewards of every rank, in rank order (B·world,)."""
    if world_size() == 1:
        return rewards
    parts = [torch.empty_like(rewards) for _ in range(world_size())]
    dist.all_gather(parts, rewards.contiguous())
    return torch.cat(parts)


def gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order (the same on every rank)."""
    if world_size() == 1:
        return list(items)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
