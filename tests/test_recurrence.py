"""StepLinear: a weight shared by the steps of a recurrence, its gradient computed in one product."""

import pytest
import torch
from torch import nn

from visattn.heads.recurrence import StepLinear


def unroll(linear: nn.Linear, xs: list[torch.Tensor], *, deferred: bool) -> torch.Tensor:
    """A small recurrence h_t = tanh(W [x_t; h_{t-1}] + b) over shrinking batches, summed."""
    step = StepLinear(linear) if deferred else linear
    h = torch.zeros(xs[0].shape[0], linear.out_features)
    total = 0
    for x in xs:
        h = torch.tanh(step(torch.cat([x, h[: x.shape[0]]], dim=1)))
        total = total + h.pow(2).sum()
    return total


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_equal_plain_autograd(bias):
    torch.manual_seed(0)
    linear = nn.Linear(3 + 5, 5, bias=bias)
    xs = [torch.randn(rows, 3, requires_grad=True) for rows in (4, 4, 3, 1)]
    grads = []
    for deferred in (False, True):
        linear.zero_grad()
        for x in xs:
            x.grad = None
        unroll(linear, xs, deferred=deferred).backward()
        grads.append([linear.weight.grad.clone()] + ([linear.bias.grad.clone()] if bias else [])
                     + [x.grad.clone() for x in xs])
    for plain, deferred in zip(*grads):
        torch.testing.assert_close(deferred, plain)


def test_accumulates_into_an_existing_gradient_and_survives_a_second_pass():
    torch.manual_seed(0)
    linear = nn.Linear(4 + 2, 2)
    xs = [torch.randn(3, 4) for _ in range(3)]
    unroll(linear, xs, deferred=False).backward()
    once = linear.weight.grad.clone()
    unroll(linear, xs, deferred=True).backward()  # adds to .grad like any parameter
    torch.testing.assert_close(linear.weight.grad, 2 * once)


def test_plain_linear_without_autograd():
    linear = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with torch.no_grad():
        step = StepLinear(linear)
        assert not step.deferred
        torch.testing.assert_close(step(x), linear(x))
    linear.requires_grad_(False)
    assert not StepLinear(linear).deferred


def test_autocast_runs_the_products_in_bf16_like_linear():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    x = torch.randn(5, 6, requires_grad=True)
    results = []
    for deferred in (False, True):
        linear.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = StepLinear(linear)(x) if deferred else linear(x)
        assert out.dtype == torch.bfloat16
        out.float().pow(2).sum().backward()
        results.append((out.detach().float(), linear.weight.grad.clone(), x.grad.clone()))
    for plain, deferred in zip(*results):
        assert plain.dtype == deferred.dtype
        torch.testing.assert_close(deferred, plain, atol=2e-2, rtol=2e-2)
