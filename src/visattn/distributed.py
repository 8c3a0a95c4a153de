"""Process-group plumbing for torchrun: one process per device, gloo on CPU, NCCL on CUDA.

Everything here is a no-op in a single process, so the engine calls it unconditionally.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "barrier", "gather_objects",
           "broadcast_object", "all_reduce_mean", "all_reduce_sum", "all_ranks_true", "cleanup"]


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1).

    Returns:
        True when running distributed.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0, the only rank that logs, draws figures and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank, in rank order (a list of one in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (in place on a copy)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (on a copy; no gradient). No host sync: the result stays on the device."""
    if not is_distributed():
        return tensor.detach()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_ranks_true(flag: torch.Tensor) -> bool:
    """True when a boolean scalar is True on every rank: a decision all ranks take together.

    A rank leaving the training loop alone (say, on a non-finite loss only it has seen) would leave the
    others waiting forever in the next gradient all-reduce; deciding on the minimum over ranks avoids that.
    """
    if not is_distributed():
        return bool(flag)
    value = flag.detach().to(torch.float32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
