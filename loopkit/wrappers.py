"""What ``Fabric.setup`` hands back: the user's own module, optimizer and dataloader, wrapped.

The wrappers hold the user's objects (never copies) and route the forward, the optimizer step
and each batch through the strategy, the precision and the bus. They are on the hot path: when
nothing needs doing (32-true, no phase wrappers) the forward is one attribute check away from
the user's own module.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

import torch
from torch import nn

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric

__all__ = ["FabricDataLoader", "FabricModule", "FabricOptimizer", "unwrap"]

_OWN = frozenset({"_optimizer", "_fabric", "_module", "_steps"})


class FabricModule(nn.Module):
    """The user's module, set up by Fabric.

    ``module`` is the user's original module; ``forward_module`` is what forward runs on (the
    same object on one device, a ``DistributedDataParallel`` or other parallel wrapper under a
    distributed strategy: register communication hooks there). ``state_dict()`` and
    ``load_state_dict()`` act on the original, so keys are exactly the original's. Other
    attributes are read from and written to the original.
    """

    def __init__(self, forward_module: nn.Module, original: nn.Module, fabric: Fabric) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._original_module = original
        # Plain references beside the registered submodules: nn.Module.__getattr__ is slow.
        self.__dict__["_fwd"] = forward_module
        self.__dict__["_orig"] = original
        self.__dict__["_fabric"] = fabric

    @property
    def module(self) -> nn.Module:
        """The user's own module."""
        return t.cast(nn.Module, self.__dict__["_orig"])

    @property
    def forward_module(self) -> nn.Module:
        """The module forward runs on (e.g. the ``DistributedDataParallel`` under ``ddp``)."""
        return t.cast(nn.Module, self.__dict__["_fwd"])

    def forward(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        fabric = self._fabric
        if not fabric._forward_active:
            return self._fwd(*args, **kwargs)
        return fabric._run_forward(self, args, kwargs)

    def state_dict(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        return self._orig.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        return self._orig.load_state_dict(*args, **kwargs)

    def __getattr__(self, name: str) -> t.Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_orig"], name)

    def __setattr__(self, name: str, value: t.Any) -> None:
        orig = self.__dict__.get("_orig")
        if orig is not None and not name.startswith("_") and hasattr(orig, name):
            setattr(orig, name, value)
        else:
            super().__setattr__(name, value)

    def __repr__(self) -> str:
        return f"FabricModule({self._orig!r})"


class FabricOptimizer:
    """The user's optimizer, set up by Fabric; ``isinstance(it, type(original))`` holds.

    Every attribute and method of the original works through it and acts on the original
    (``param_groups``, ``state``, ``state_dict``, ``add_param_group``...). ``optimizer`` is the
    original. ``step(closure=...)`` runs through the strategy and precision and fires
    ``on_before_optimizer_step`` (gradients final and unscaled) and ``on_optimizer_step``.
    """

    _optimizer: torch.optim.Optimizer
    _fabric: Fabric
    _module: nn.Module | None
    _steps: int

    @staticmethod
    def wrap(
        optimizer: torch.optim.Optimizer, fabric: Fabric, module: nn.Module | None
    ) -> FabricOptimizer:
        cls = _wrapper_class(type(optimizer))
        self = object.__new__(cls)
        object.__setattr__(self, "_optimizer", optimizer)
        object.__setattr__(self, "_fabric", fabric)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_steps", 0)
        return self

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The user's own optimizer."""
        return self._optimizer

    def step(self, closure: c.Callable[[], t.Any] | None = None, **kwargs: t.Any) -> t.Any:
        return self._fabric._optimizer_step(self, closure, kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        fabric = self._fabric
        fabric._bus.call(
            "on_before_zero_grad",
            fabric=fabric,
            trainer=fabric._trainer,
            module=self._module,
            optimizer=self._optimizer,
        )
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, t.Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, t.Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> t.Any:
        return getattr(object.__getattribute__(self, "_optimizer"), name)

    def __setattr__(self, name: str, value: t.Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._optimizer, name, value)

    def __repr__(self) -> str:
        return f"FabricOptimizer({self._optimizer!r})"


_classes: dict[type, type] = {}


def _wrapper_class(cls: type) -> type:
    # A subclass of both, so isinstance(wrapped, type(original)) holds; made once per type.
    made = _classes.get(cls)
    if made is None:
        made = type(f"Fabric{cls.__name__}", (FabricOptimizer, cls), {"__init__": None})
        _classes[cls] = made
    return made


class FabricDataLoader:
    """The user's dataloader, set up by Fabric: batches arrive on the device.

    Each ``iter()`` sets the sampler's epoch (for ``DistributedSampler`` shuffling) and counts
    it. Other attributes are the original's; ``dataloader`` is the original.
    """

    def __init__(
        self, dataloader: t.Any, fabric: Fabric, device: torch.device | None
    ) -> None:
        self._dataloader = dataloader
        self._fabric = fabric
        self._device = device
        self._epoch = 0

    @property
    def dataloader(self) -> t.Any:
        return self._dataloader

    def __len__(self) -> int:
        return len(self._dataloader)

    def __iter__(self) -> c.Iterator[t.Any]:
        loader = self._dataloader
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            set_epoch = getattr(sampler, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(self._epoch)
        self._epoch += 1
        device = self._device
        if device is None:
            yield from loader
            return
        to_device = self._fabric._strategy.batch_to_device
        for batch in loader:
            yield to_device(batch, device)

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self.__dict__["_dataloader"], name)


def unwrap(obj: t.Any) -> t.Any:
    """The user's original object behind a Fabric wrapper (``obj`` itself otherwise)."""
    if isinstance(obj, FabricModule):
        return obj.module
    if isinstance(obj, FabricOptimizer):
        return obj.optimizer
    if isinstance(obj, FabricDataLoader):
        return obj.dataloader
    return obj
