"""Shared pieces of the precision plugin's tests: a probe module and a small regression task."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class Probe(nn.Module):
    """A linear regressor that records the dtypes it sees inside its forward."""

    def __init__(self, features: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.seen: dict[str, torch.dtype] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen["input"] = x.dtype
        out = self.linear(x)
        self.seen["activation"] = out.dtype
        self.seen["default"] = torch.get_default_dtype()
        return out


def regression_data(
    n: int = 64, features: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    true_w = torch.randn(features, 1, generator=gen)
    y = x @ true_w + 0.5
    return x, y


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return regression_data()


@pytest.fixture(autouse=True)
def _default_dtype_is_restored():
    # Every precision must leave torch's default dtype as it found it.
    before = torch.get_default_dtype()
    yield
    assert torch.get_default_dtype() == before
