"""The training engine shared by every task: plain loops, checkpoints, exact resume, DDP.

A :class:`~visattn.tasks.base.Task` tells the engine how to collate, the named loss terms and their
``weight_dict``, the evaluation and which metric picks the best checkpoint; the engine does the rest:

    fit(model, get_task("classify"), train_set, val_set, TrainConfig(epochs=5), "runs/x")

writes ``runs/x/metrics.jsonl`` (one JSON line per epoch), ``runs/x/curves.png`` (both through the
loggers of :mod:`visattn.loggers`; ``TrainConfig(tensorboard=True)`` adds TensorBoard events with the step and
epoch scalars and an attention figure per evaluation), ``runs/x/best.safetensors`` and
``runs/x/last.safetensors`` (with optimizer and RNG state for ``resume``). Under torchrun each process
trains on its shard of every epoch and (for tasks that gather, ``Task.sharded_eval``) evaluates its share of
the validation set; rank 0 alone logs, draws and writes.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from visattn import distributed as dist
from visattn.checkpoint import optimizer_state, read_checkpoint, save_checkpoint
from visattn.config import config_to_dict
from visattn.data.core import write_json_atomic
from visattn.loggers import Logger, attention_figure, make_loggers
from visattn.tasks.base import Task, unwrap

__all__ = ["TrainConfig", "NonFiniteLossError", "fit", "train_one_epoch", "evaluate",
           "select_device", "seed_everything", "autocast_context", "lr_factor", "make_loader"]

log = logging.getLogger("visattn")


@dataclass
class TrainConfig:
    """How to train. Defaults suit the small procedural tasks on a CPU."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "constant" | "cosine" | "step" (x0.1 at 2/3 of training)
    warmup_steps: int = 0
    grad_clip: float | None = 5.0  # LSTMs and set losses spike early; clipping keeps the first epochs sane
    early_stop_patience: int | None = None  # epochs without improvement of the monitored metric
    eval_every: int = 1
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" | "mps"
    dtype: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast; fp16 uses a gradient scaler on CUDA)
    num_workers: int = 0
    log_every: int = 20  # steps between progress-bar updates (and non-finite checks off the CPU)
    compile: bool = False
    progress: bool = True
    tensorboard: bool = False  # also log to <run_dir>/tensorboard (needs the tensorboard extra)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("epochs, batch_size and eval_every must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.schedule not in ("constant", "cosine", "step"):
            raise ValueError(f"schedule must be constant, cosine or step, got {self.schedule!r}")
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"dtype must be fp32, bf16 or fp16, got {self.dtype!r}")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def select_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then MPS, then CPU; an explicit name must be available (clear error if not)."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        # Under torchrun each process takes the GPU of its local rank (plain "cuda" too, not all on cuda:0).
        return torch.device("cuda", dist.local_rank() if dist.local_rank() < torch.cuda.device_count() else 0)
    if name == "auto":
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, dtype: str):
    """Autocast for bf16/fp16, a no-op context for fp32."""
    if dtype == "fp32":
        return nullcontext()
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=torch_dtype)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    if cfg.schedule == "step":
        return 0.1 if progress >= 2 / 3 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_loader(dataset: Dataset, task: Task, cfg: TrainConfig, *, train: bool, device: torch.device) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): exact resume, and shards under torchrun
    (evaluation: this rank's :class:`~visattn.distributed.ShardSampler` share when the task gathers)."""
    sampler = None
    if train:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True,
                                     seed=cfg.seed, drop_last=False)
    elif dist.is_distributed() and task.sharded_eval:
        sampler = dist.ShardSampler(len(dataset))
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, shuffle=False, collate_fn=task.collate,
                      num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.num_workers > 0)


def train_one_epoch(model: nn.Module, loader: DataLoader, task: Task, optimizer: torch.optim.Optimizer,
                    cfg: TrainConfig, device: torch.device, *, epoch: int, step: int, total_steps: int,
                    scaler: torch.amp.GradScaler | None = None, logger: Logger | None = None) -> dict[str, float]:
    """One pass over ``loader``. Returns mean loss terms, ``images_per_s`` and the new global ``step``.
    Every ``log_every`` steps the step's loss terms and learning rate go to ``logger``.

    Raises:
        NonFiniteLossError: on a NaN/inf loss (checked every step on CPU, every ``log_every`` elsewhere).
    """
    model.train()
    sums: dict[str, Tensor] = {}
    num_batches, num_images = 0, 0
    check_every = 1 if device.type == "cpu" else cfg.log_every
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not (cfg.progress and dist.is_main()), dynamic_ncols=True)
    for batch in bar:
        factor = lr_factor(step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        with autocast_context(device, cfg.dtype):
            terms = task.criterion(model, batch, device)
            loss = task.total_loss(terms)
        terms = {"loss": loss, **terms}
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        step += 1
        num_batches += 1
        num_images += len(batch["images"])
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
        # Decided together: a rank stopping alone would leave the others in the next all-reduce.
        if num_batches % check_every == 0 and not dist.all_ranks_true(torch.isfinite(sums["loss"])):
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {step}")
        if num_batches % cfg.log_every == 0:
            if logger is not None:
                logger.log_step(step, {**{k: v.detach() for k, v in terms.items()},
                                       "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{float(sums['loss']) / num_batches:.4f}",
                            img_s=f"{num_images / (time.perf_counter() - start):.0f}")
    if num_batches and not dist.all_ranks_true(torch.isfinite(sums["loss"])):
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {step}")
    elapsed = time.perf_counter() - start
    stats = {f"train_{k}": float(dist.all_reduce_mean(v)) / max(1, num_batches) for k, v in sums.items()}
    stats.update(images_per_s=num_images * dist.world_size() / max(elapsed, 1e-9), train_seconds=elapsed, step=step)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: Task, device: torch.device) -> dict[str, float]:
    """The task's metrics over a whole loader, in eval mode."""
    model.eval()
    return task.evaluate(unwrap(model), loader, device)


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {"python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]}


def _restore_rng(training: dict[str, Any], rng_tensors: dict[str, Tensor]) -> None:
    state = training.get("rng")
    if state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in rng_tensors:
        torch.set_rng_state(rng_tensors["torch"])
    cuda = [rng_tensors[k] for k in sorted(rng_tensors) if k.startswith("cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(model: nn.Module, task: Task, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig,
        run_dir: str | Path, *, model_name: str | None = None, resume: str | Path | None = None,
        device: torch.device | None = None) -> dict[str, Any]:
    """Train, evaluate each ``eval_every`` epochs, checkpoint, and stop early or on a non-finite loss.

    Args:
        model: a registered model (``model.config`` is stored in the checkpoints).
        task: the :class:`~visattn.tasks.base.Task` (collate, criterion + weight_dict, evaluation, monitor).
        train_set, val_set: datasets of sample dicts (``val_set`` may be None: no evaluation, no ``best``).
        cfg: the training config.
        run_dir: output folder.
        resume: a ``last.safetensors`` to continue from exactly (same model/optimizer/RNG state).
        model_name: the model's registry name in the checkpoints (default: ``task.model_name``).
        device: overrides ``cfg.device``.

    Returns:
        ``{"history": [...per-epoch records], "best": {...}, "stopped": reason, "run_dir": str}``.
    """
    run_dir = Path(run_dir)
    model_name = model_name or task.model_name
    device = device or select_device(cfg.device)
    distributed = dist.init_from_env(device)
    seed_everything(cfg.seed)
    model.to(device)
    if distributed and device.type == "cuda":
        # Batch statistics over the global batch, as in one process (reuses the same parameters/buffers).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = task.param_groups(model, cfg)
    # The fused kernel updates every tensor in one pass (much faster than the per-op path on a CPU, see
    # docs/design.md), and is the recommended path on CUDA.
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch, step, stale = 0, 0, 0
    if resume is not None:
        checkpoint = read_checkpoint(resume, task=task.name)
        unwrap(model).load_state_dict(checkpoint.state_dict)
        optimizer.load_state_dict(optimizer_state(checkpoint))
        training = checkpoint.training
        start_epoch, step, stale = training["epoch"], training["step"], training.get("stale", 0)
        history, best = training.get("history", []), training.get("best")
        if best is not None and best.get("metric", task.monitor) != task.monitor:
            raise ValueError(f"{resume}: this run kept its best checkpoint by {best['metric']!r}, and the task now "
                             f"monitors {task.monitor!r}: resume with the same monitor, or start a new run")
        _restore_rng(training, checkpoint.rng_tensors)
    train_model: nn.Module = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    if cfg.compile:
        train_model = torch.compile(train_model)
    scaler = torch.amp.GradScaler("cuda") if cfg.dtype == "fp16" and device.type == "cuda" else None
    train_loader = make_loader(train_set, task, cfg, train=True, device=device)
    val_loader = make_loader(val_set, task, cfg, train=False, device=device) if val_set is not None else None
    total_steps = cfg.epochs * len(train_loader)
    config_dict = config_to_dict(unwrap(model).config)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config_to_dict(cfg), run_dir / "train_config.json", indent=2)
    loggers = make_loggers(run_dir, tensorboard=cfg.tensorboard, main=dist.is_main(), history=history)
    stopped = "completed"
    for epoch in range(start_epoch, cfg.epochs):
        train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        try:
            stats = train_one_epoch(train_model, train_loader, task, optimizer, cfg, device, epoch=epoch, step=step,
                                    total_steps=total_steps, scaler=scaler, logger=loggers)
        except NonFiniteLossError as err:
            stopped = f"{err}; kept the last good checkpoint in {run_dir}"
            log.error("stopping: %s", stopped)
            break
        step = stats.pop("step")
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, **stats}
        improved = False
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            if task.sharded_eval or not distributed:  # every rank its share; the task gathers before scoring
                metrics = evaluate(model, val_loader, task, device)
            else:
                metrics = evaluate(model, val_loader, task, device) if dist.is_main() else {}
            metrics = dist.broadcast_object(metrics)  # rank 0's numbers, bit for bit, on every rank
            if task.monitor not in metrics:
                raise KeyError(f"task {task.name!r} evaluation returned no {task.monitor!r}: {sorted(metrics)}")
            record.update({f"val_{k}": v for k, v in metrics.items()})
            improved = _is_better(metrics[task.monitor], best["value"] if best else None, task.mode)
            if improved:
                best = {"epoch": epoch + 1, "metric": task.monitor, "value": metrics[task.monitor]}
                stale = 0
            else:
                stale += 1
            if loggers.takes_figures:
                figure = attention_figure(task, unwrap(model), val_set, device)
                if figure is not None:
                    loggers.log_figure("attention", figure, epoch + 1)
        history.append(record)
        if dist.is_main():
            loggers.log_epoch(epoch + 1, record)
            _write_epoch(run_dir, model, model_name, task, config_dict, improved, optimizer,
                         {"epoch": epoch + 1, "step": step, "stale": stale, "history": history, "best": best,
                          "rng": _rng_state()})
            log.info("epoch %d: %s", epoch + 1, _summary(record))
        dist.barrier()
        if cfg.early_stop_patience is not None and stale >= cfg.early_stop_patience:
            stopped = f"early stop: {task.monitor} did not improve for {stale} evaluations"
            log.info(stopped)
            break
    loggers.close()
    return {"history": history, "best": best, "stopped": stopped, "run_dir": str(run_dir)}


def _write_epoch(run_dir: Path, model: nn.Module, model_name: str, task: Task, config_dict: dict, improved: bool,
                 optimizer: torch.optim.Optimizer, training: dict[str, Any]) -> None:
    core = unwrap(model)
    save_checkpoint(run_dir / "last.safetensors", core, task=task.name, model_name=model_name, config=config_dict,
                    training=training, optimizer=optimizer, save_rng=True)
    if improved:
        save_checkpoint(run_dir / "best.safetensors", core, task=task.name, model_name=model_name,
                        config=config_dict, training={k: training[k] for k in ("epoch", "step", "best")})


def _summary(record: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
