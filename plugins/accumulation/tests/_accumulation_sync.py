"""A one-device strategy that counts the gradient all-reduces DDP would run (test helper)."""

from __future__ import annotations

import contextlib
import typing as t

import torch
from torch import nn

from loopkit import SingleDeviceStrategy


class _Replica(nn.Module):
    """Stands where DistributedDataParallel would: decides after forward whether to sync."""

    def __init__(self, module: nn.Module, strategy: SyncCountingStrategy) -> None:
        super().__init__()
        self.module = module
        self.__dict__["_strategy"] = strategy

    def forward(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        out = self.module(*args, **kwargs)
        strategy = self.__dict__["_strategy"]
        # As DDP's reducer: prepared for an all-reduce unless no_sync is active at this point.
        if torch.is_grad_enabled() and not strategy.blocked:
            strategy.armed = True
        return out


class SyncCountingStrategy(SingleDeviceStrategy):
    """Counts all-reduces as DDP would run them, with one device standing in for several.

    A backward all-reduces when the forward that built its graph finished outside
    ``no_backward_sync`` (``syncs``). Backward passes run outside it are counted apart
    (``unblocked_backwards``): suppressing a sync must hold in both phases.
    """

    def __init__(self) -> None:
        super().__init__()
        self.blocked = 0
        self.armed = False
        self.syncs = 0
        self.unblocked_backwards = 0
        self.backwards = 0
        self.syncs_per_step: list[int] = []

    @contextlib.contextmanager
    def no_backward_sync(  # type: ignore[override]
        self, module: nn.Module, enabled: bool = True
    ) -> t.Iterator[None]:
        if not enabled:
            yield
            return
        assert isinstance(module, _Replica), "no_backward_sync must get the parallel wrapper"
        self.blocked += 1
        try:
            yield
        finally:
            self.blocked -= 1

    def setup_module(self, module: nn.Module) -> nn.Module:
        return _Replica(module, self)

    def backward(self, loss: torch.Tensor, module: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        self.backwards += 1
        if self.armed:
            self.syncs += 1
        if not self.blocked:
            self.unblocked_backwards += 1
        self.armed = False
        super().backward(loss, module, *args, **kwargs)

    def optimizer_step(self, optimizer: t.Any, closure: t.Any = None, **kwargs: t.Any) -> t.Any:
        out = super().optimizer_step(optimizer, closure, **kwargs)  # a closure runs backward
        self.syncs_per_step.append(self.syncs - sum(self.syncs_per_step))
        return out
