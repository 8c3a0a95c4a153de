"""Process-group plumbing for torchrun: one process per device, gloo on CPU, NCCL on CUDA.

Everything here is a no-op in a single process, so the engine calls it unconditionally.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

T = TypeVar("T")

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "barrier", "gather_objects",
           "broadcast_object", "all_reduce_mean", "all_ranks_true", "cleanup", "ShardSampler",
           "is_sharded", "gather_shards", "merge_shards"]


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


class ShardSampler(Sampler[int]):
    """This rank's share of a dataset for evaluation: items rank, rank + W, rank + 2W, ... (W = world size).

    Nothing is repeated or padded (unlike ``DistributedSampler``), so every item is evaluated exactly once;
    shards differ in length by at most one. :func:`gather_shards` puts the ranks' per-item results back in
    dataset order, :func:`merge_shards` adds up their accumulators.
    """

    def __init__(self, length: int) -> None:
        self.length, self.rank, self.world = length, rank(), world_size()

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


def is_sharded(loader: Any) -> bool:
    """True when ``loader`` reads this rank's :class:`ShardSampler` share in a distributed run."""
    return is_distributed() and isinstance(getattr(loader, "sampler", None), ShardSampler)


def gather_shards(items: list[T], loader: Any) -> list[T]:
    """Per-item results of ``loader``, in its order -> every item's result in dataset order, on every rank.

    Unchanged when the loader is not sharded. Rank r's j-th item is item j·W + r of the dataset.
    """
    if not is_sharded(loader):
        return items
    parts = gather_objects(items)
    merged: list[T] = []
    for j in range(max(len(part) for part in parts)):
        merged.extend(part[j] for part in parts if j < len(part))
    return merged


def merge_shards(value: T, loader: Any, merge: Callable[[T, T], T]) -> T:
    """An accumulator over ``loader`` -> the ranks' accumulators combined with ``merge`` (unchanged when
    the loader is not sharded)."""
    if not is_sharded(loader):
        return value
    parts = gather_objects(value)
    combined = parts[0]
    for part in parts[1:]:
        combined = merge(combined, part)
    return combined


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (in place on a copy; no host sync: the result stays on the device)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


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
