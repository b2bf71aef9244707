"""Shared helpers for the Trainer tests: synthetic data and a plain-loop reference."""

from __future__ import annotations

import copy
import typing as t

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loopkit


def data(n: int = 48, batch_size: int = 8, features: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x @ torch.randn(features, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(**kwargs: t.Any) -> loopkit.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("accelerator", "cpu")
    return loopkit.Trainer(**kwargs)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def plain_closure_loop(model: t.Any, opt: torch.optim.Optimizer, epochs: int = 1) -> None:
    """The reference for a step with a closure: ``opt.step(closure)`` per batch of ``data()``,
    the closure computing ``model.compute_loss``, zeroing and running backward."""
    for _ in range(epochs):
        for batch in data():

            def closure(batch: t.Any = batch) -> torch.Tensor:
                loss = model.compute_loss(batch)
                opt.zero_grad()
                loss.backward()
                return t.cast(torch.Tensor, loss)

            opt.step(closure)


def twin(module: nn.Module) -> nn.Module:
    """An independent copy with identical weights (the plain loop's model)."""
    return copy.deepcopy(module)


class Regressor(loopkit.LoopModule):
    """A small linear regressor used by many tests."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def compute_loss(self, batch: t.Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        return self.compute_loss(batch)

    def configure_optimizers(self) -> t.Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)
