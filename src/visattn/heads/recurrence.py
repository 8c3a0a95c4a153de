"""Tools of a recurrence that is fast on any batch: the running-batch plan and per-step weights.

:class:`RunningBatch` plans a batch of sequences of different lengths so that step t runs only the
sequences still running (no work on padding), and maps the per-step outputs back to (B, T, ...).

:class:`StepLinear` is a weight used at every step of a recurrence, with its gradient computed in one product.

Autograd computes the gradient of ``y_t = x_t W^T`` at every step t of a recurrence as ``dW += g_t^T x_t``:
T thin products (b rows each, b = the batch) that each read and write the whole (out, in) gradient. With
b = 32 such a product streams the weight gradient through memory for 16 FLOP per byte, so it runs at the
machine's memory bandwidth rather than its arithmetic peak. :class:`StepLinear` keeps each step's
``(g_t, x_t)`` instead and computes ``dW = cat(g)^T cat(x)`` once, after the backward pass has gone through
every step: one product over all Σ_t b_t rows (the same sum, up to floating-point rounding).

    recurrent = StepLinear(self.lstm_state)        # once per forward pass
    for t in range(steps):
        gates = recurrent(torch.cat([z, h], dim=1))  # x_t W^T (+ bias)

The input gradient ``g_t W`` is still computed at each step, as the recurrence needs it. Outside
autograd (no_grad, or a frozen weight) :class:`StepLinear` is a plain ``F.linear``. Under autocast the
products run in the autocast dtype, like ``F.linear``'s, with the weight cast once per forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RunningBatch", "StepLinear"]


class _Steps:
    """The (output gradient, input) pairs of one forward pass's steps, filled during backward."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Tensor, Tensor]] = []


class _SharedWeight(torch.autograd.Function):
    """Identity on the weight; its backward runs after every step's and turns the pairs into dW."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, steps: _Steps) -> Tensor:
        ctx.steps = steps
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, None]:
        pairs, ctx.steps.pairs = ctx.steps.pairs, []  # every step's backward has run
        if not pairs:
            return grad, None
        outputs = torch.cat([g for g, _ in pairs])  # (Σ b_t, out)
        inputs = torch.cat([x for _, x in pairs])  # (Σ b_t, in)
        weight_grad = outputs.t().mm(inputs)
        return (weight_grad if grad is None else grad + weight_grad), None


class _StepProduct(torch.autograd.Function):
    """``x W^T`` whose weight gradient is left to :class:`_SharedWeight`.

    With ``weight_t`` (a contiguous copy of W^T) both products run feature-major: ``(W x^T)^T`` and
    ``(W^T g^T)^T``, which CPU BLAS libraries run up to 1.7x faster than ``x W^T`` and ``g W`` when x has
    few rows (measured on the paper's LSTM: 187 vs 107 GFLOP/s at 32 rows, 2 threads).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, weight_t: Tensor | None, steps: _Steps) -> Tensor:
        x = x.to(weight.dtype)
        out = F.linear(x, weight) if weight_t is None else weight.mm(x.t()).t().contiguous()
        ctx.save_for_backward(x, weight, weight_t)
        ctx.steps = steps
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        x, weight, weight_t = ctx.saved_tensors
        ctx.steps.pairs.append((grad, x))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.mm(weight) if weight_t is None else weight_t.mm(grad.t()).t().contiguous()
        return grad_x, None, None, None


#: Weights with at least this many elements use the feature-major products on CPUs (see _StepProduct).
FEATURE_MAJOR_MIN_ELEMENTS = 1 << 20


class StepLinear:
    """``linear`` applied at every step of one forward pass, its weight gradient deferred (module docstring).

    Build one per forward pass: it holds that pass's steps until the backward pass is over. Under
    autocast the weight is cast once here, not at every step.
    """

    def __init__(self, linear: nn.Linear) -> None:
        weight, self.bias = linear.weight, linear.bias
        self.deferred = torch.is_grad_enabled() and weight.requires_grad
        self.weight, self.weight_t = weight, None
        if not self.deferred:
            return
        device = weight.device.type
        if torch.is_autocast_enabled(device):
            weight = weight.to(torch.get_autocast_dtype(device))
            self.bias = None if self.bias is None else self.bias.to(weight.dtype)
        self.steps = _Steps()
        self.weight = _SharedWeight.apply(weight, self.steps)
        if device == "cpu" and weight.numel() >= FEATURE_MAJOR_MIN_ELEMENTS:
            self.weight_t = weight.detach().t().contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        if not self.deferred:
            return F.linear(x, self.weight, self.bias)
        out = _StepProduct.apply(x, self.weight, self.weight_t, self.steps)
        return out if self.bias is None else out + self.bias


class RunningBatch:
    """Where a batch's real steps live, for a recurrence that drops sequences as they end.

    The recurrence runs on the batch sorted by decreasing length (``order``; None when it already is), so
    step t runs the first ``running[t]`` rows. ``decode`` holds each sequence's number of steps, on the CPU
    (the plan needs no device sync); ``steps`` is the padded length T-1. The per-step outputs, concatenated,
    are *time-major* (all rows of step 0, then step 1, ...); :meth:`gather` turns them into *batch-major*
    order of the original rows (sequence 0's steps, then sequence 1's, ...), and :meth:`scatter` places
    those N real steps into a zero-padded (B, T-1, ...) tensor. ``mask`` (B, T-1) marks the real steps,
    ``flat`` their positions in the flattened (B·(T-1)) steps, ``time_major`` the real steps of the sorted
    inputs in time-major order (what step t reads is chunk t of ``running``).
    """

    def __init__(self, decode: Tensor, steps: int, device: torch.device) -> None:
        decode = decode.to(torch.long).clamp(0, steps)
        batch = decode.shape[0]
        order = torch.argsort(decode, descending=True, stable=True)
        sorted_decode = decode[order]
        longest = int(sorted_decode[0]) if batch else 0
        time = torch.arange(steps)
        self.running: list[int] = (sorted_decode.unsqueeze(0) > time[:longest].unsqueeze(1)).sum(dim=1).tolist()
        mask = time.unsqueeze(0) < decode.unsqueeze(1)  # (B, T-1), original row order
        position = torch.empty_like(order)
        position[order] = torch.arange(batch)  # row r runs as sorted row position[r]
        running = torch.tensor(self.running, dtype=torch.long)
        offsets = running.cumsum(0) - running  # the first time-major row of each step
        time_major = offsets.unsqueeze(0) + position.unsqueeze(1)  # (B, longest)
        self.batch, self.steps = batch, steps
        self.full = bool(mask.all())
        # non_blocking: a plain .to() of a CPU tensor waits for the device's queue (a host sync every step)
        self.order = None if bool((order == torch.arange(batch)).all()) else order.to(device, non_blocking=True)
        self.mask = mask.to(device, non_blocking=True)
        self._gather = time_major[mask[:, :longest]].to(device, non_blocking=True)
        self.flat = (torch.arange(batch).unsqueeze(1) * steps + time)[mask].to(device, non_blocking=True)
        sorted_mask = time.unsqueeze(0) < sorted_decode.unsqueeze(1)
        sorted_flat = torch.arange(batch).unsqueeze(1) * steps + time
        self.time_major = sorted_flat.t()[sorted_mask.t()].to(device, non_blocking=True)

    def gather(self, time_major: Tensor) -> Tensor:
        """(N, ...) rows of the steps in time-major sorted order -> batch-major original order."""
        return time_major.index_select(0, self._gather)

    def scatter(self, packed: Tensor) -> Tensor:
        """(N, ...) batch-major real steps -> (B, T-1, ...) with zeros on padding."""
        if self.full:
            return packed.view(self.batch, self.steps, *packed.shape[1:])
        full = packed.new_zeros(self.batch * self.steps, *packed.shape[1:])
        return full.index_copy_(0, self.flat, packed).view(self.batch, self.steps, *packed.shape[1:])
