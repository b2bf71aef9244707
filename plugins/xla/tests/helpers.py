"""The model, data and plain-PyTorch reference loops the XLA tests compare against."""

from __future__ import annotations

import typing as t

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

_gen = torch.Generator().manual_seed(3)
X = torch.randn(48, 4, generator=_gen)
#: A learnable target, so that a loss that falls shows training works.
Y = torch.tanh(X @ torch.randn(4, 1, generator=_gen)) + 0.1


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def loader(batch_size: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=batch_size)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.01)


def eager_reference(epochs: int = 2, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """The training loop in plain PyTorch on the CPU."""
    model = make_model()
    opt = make_optimizer(model)
    for _ in range(epochs):
        for xb, yb in loader(batch_size):
            loss = F.mse_loss(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
    return model.state_dict()


def on_cpu(state: t.Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def assert_close(a: t.Mapping[str, torch.Tensor], b: t.Mapping[str, torch.Tensor]) -> None:
    a, b = on_cpu(a), on_cpu(b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, msg=key)
