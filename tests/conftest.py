"""Shared fixtures: the registered tiny models, built like real ones.

``tiny_classifier``, ``tiny_captioner`` and ``tiny_detector`` are factories over the registry's ``tiny_*`` variants
(``visattn/heads/variants.py``): ``tiny_captioner(attention="dot")`` seeds torch and returns
``build_model("tiny_captioner", attention="dot")``, so a test names only what it changes. ``tiny_config`` gives
the same configs for code that takes a config (``tiny_config("captioner", max_len=12)``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import pytest
import torch
from torch import nn

from visattn.models import build_model, model_entry


def _factory(name: str) -> Callable[..., nn.Module]:
    def build(*, seed: int = 0, **overrides: Any) -> nn.Module:
        torch.manual_seed(seed)  # the same weights in every test that builds the same variant
        return build_model(name, **overrides)

    return build


@pytest.fixture
def tiny_classifier() -> Callable[..., nn.Module]:
    """``tiny_classifier(seed=0, **config_fields)``: a seeded ``build_model("tiny_classifier", ...)``."""
    return _factory("tiny_classifier")


@pytest.fixture
def tiny_captioner() -> Callable[..., nn.Module]:
    """``tiny_captioner(seed=0, **config_fields)``: a seeded ``build_model("tiny_captioner", ...)``."""
    return _factory("tiny_captioner")


@pytest.fixture
def tiny_detector() -> Callable[..., nn.Module]:
    """``tiny_detector(seed=0, **config_fields)``: a seeded ``build_model("tiny_detector", ...)``."""
    return _factory("tiny_detector")


@pytest.fixture
def tiny_config() -> Callable[..., Any]:
    """``tiny_config(head, **config_fields)``: the config of ``tiny_<head>`` with some fields replaced."""

    def make(head: str, **overrides: Any) -> Any:
        return replace(model_entry(f"tiny_{head}").make_config(), **overrides)

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and a shared CI machine does not oversubscribe): a module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
