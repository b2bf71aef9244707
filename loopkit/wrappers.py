"""What ``Fabric.setup`` hands back: the user's own module, optimizer and dataloader, wrapped.

The wrappers hold the user's objects (never copies) and route the forward, the optimizer step
and each batch through the strategy, the precision and the bus. They are on the hot path: when
nothing needs doing (``32-true``, no phase contexts, no hooks registered on the wrapper itself)
calling the wrapped module calls the user's module straight away, without a Python frame of the
wrapper's and without a second pass through ``nn.Module.__call__``; the optimizer's ``step``
runs its whole logic in one frame.

This module must not import torch's optional heavy parts (``torch._dynamo``) nor any plugin.
"""

from __future__ import annotations

import collections.abc as c
import operator
import typing as t

import torch
from torch import nn

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric

__all__ = ["FabricDataLoader", "FabricModule", "FabricOptimizer", "unwrap"]


class FabricModule(nn.Module):
    """The user's module, set up by Fabric.

    ``module`` is the user's original module; ``forward_module`` is what forward runs on (the
    same object on one device, a ``DistributedDataParallel`` or other parallel wrapper under a
    distributed strategy). ``state_dict()``, ``load_state_dict()``, ``named_parameters()`` and
    ``named_buffers()`` act on the original, so names and keys are exactly the original's. Other
    attributes are read from, and (when the original has them) written to, the original.
    """

    def __init__(self, forward_module: nn.Module, original: nn.Module, fabric: Fabric) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._original_module = original
        # Plain references beside the registered submodules: nn.Module.__getattr__ is slow.
        self.__dict__["_fwd"] = forward_module
        self.__dict__["_orig"] = original
        self.__dict__["_fabric"] = fabric
        self.__dict__["training"] = original.training
        #: What calling the wrapper calls: the forward module itself when nothing needs doing
        #: around it, else nn.Module's own call machinery (bound to this wrapper).
        self.__dict__["_call"] = self._full_call
        self._refresh()

    def _refresh(self) -> None:
        """Re-decide whether a call can go straight to ``forward_module``.

        It can when the precision does nothing in the forward, no phase context wraps it, and no
        hook is registered on this wrapper itself (hooks on the user's module, and global module
        hooks, still run: the user's module is called through ``nn.Module.__call__``). Fabric
        calls this whenever one of those changes; registering a hook here turns it off at once.
        """
        direct = not self._fabric._forward_active and not (
            self._forward_pre_hooks
            or self._forward_hooks
            or self._backward_hooks
            or self._backward_pre_hooks
        )
        self.__dict__["_call"] = self._fwd if direct else self._full_call

    def _full_call(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        return nn.Module.__call__(self, *args, **kwargs)

    @property
    def module(self) -> nn.Module:
        """The user's own module."""
        return t.cast(nn.Module, self.__dict__["_orig"])

    @property
    def forward_module(self) -> nn.Module:
        """The module forward runs on (e.g. the ``DistributedDataParallel`` under ``ddp``)."""
        return t.cast(nn.Module, self.__dict__["_fwd"])

    # The hot path. Calling the wrapper looks ``__call__`` up on the class, finds this
    # descriptor, and calls what it returns: on the direct path that is the forward module
    # itself, so no Python frame of the wrapper's runs and nn.Module.__call__ is not entered a
    # second time. Hooks on the user's module (and global module hooks) still run inside it.
    __call__ = property(operator.attrgetter("_call"))

    def forward(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        fabric = self._fabric
        if fabric._forward_active:
            return fabric._run_forward(self, args, kwargs)
        return self._fwd(*args, **kwargs)

    # Registering a hook on the wrapper turns the direct call off (nn.Module.__call__ runs it).
    def register_forward_pre_hook(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        handle = super().register_forward_pre_hook(*args, **kwargs)
        self.__dict__["_call"] = self._full_call
        return handle

    def register_forward_hook(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        handle = super().register_forward_hook(*args, **kwargs)
        self.__dict__["_call"] = self._full_call
        return handle

    def register_full_backward_pre_hook(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        handle = super().register_full_backward_pre_hook(*args, **kwargs)
        self.__dict__["_call"] = self._full_call
        return handle

    def register_full_backward_hook(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        handle = super().register_full_backward_hook(*args, **kwargs)
        self.__dict__["_call"] = self._full_call
        return handle

    def register_backward_hook(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        handle = super().register_backward_hook(*args, **kwargs)
        self.__dict__["_call"] = self._full_call
        return handle

    def state_dict(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        return self._orig.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        return self._orig.load_state_dict(*args, **kwargs)

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> c.Iterator[tuple[str, nn.Parameter]]:
        return t.cast(
            c.Iterator[tuple[str, nn.Parameter]],
            self._orig.named_parameters(prefix, recurse, remove_duplicate),
        )

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> c.Iterator[tuple[str, torch.Tensor]]:
        return t.cast(
            c.Iterator[tuple[str, torch.Tensor]],
            self._orig.named_buffers(prefix, recurse, remove_duplicate),
        )

    def __getattr__(self, name: str) -> t.Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            orig = self.__dict__.get("_orig")
            if orig is None:
                raise
            return getattr(orig, name)

    def __setattr__(self, name: str, value: t.Any) -> None:
        orig = self.__dict__.get("_orig")
        if orig is not None and not name.startswith("_") and hasattr(orig, name):
            setattr(orig, name, value)
            if name == "training":
                self.__dict__["training"] = value
        else:
            super().__setattr__(name, value)

    def __repr__(self) -> str:
        return f"FabricModule({self._orig!r})"


class FabricOptimizer:
    """The user's optimizer, set up by Fabric; ``isinstance(it, type(original))`` holds.

    The wrapper shares the original's attribute dictionary: ``param_groups``, ``state``,
    ``defaults`` and every other attribute are the original's own objects (a ``load_state_dict``
    on either is seen by both), and methods of the optimizer's class (``add_param_group``,
    hook registration...) act on them. ``optimizer`` is the original. ``step(closure=...)``
    runs through the strategy and the precision and fires ``on_before_optimizer_step``
    (gradients final and unscaled) and ``on_optimizer_step``; ``zero_grad()`` fires
    ``on_before_zero_grad``.
    """

    # Slots keep the wrapper's own state out of the shared attribute dictionary; no
    # __getattr__ is defined, so attribute reads stay plain dictionary lookups.
    __slots__ = ("_optimizer", "_fabric", "_module", "_step")

    _optimizer: torch.optim.Optimizer
    _fabric: Fabric
    _module: nn.Module | None
    _step: c.Callable[..., t.Any]

    @staticmethod
    def wrap(
        optimizer: torch.optim.Optimizer, fabric: Fabric, module: nn.Module | None
    ) -> FabricOptimizer:
        """Wrap ``optimizer``; ``module`` is the set-up module that owns its parameters."""
        cls = _wrapper_class(type(optimizer))
        self: FabricOptimizer = object.__new__(cls)
        object.__setattr__(self, "__dict__", optimizer.__dict__)
        self._optimizer = optimizer
        self._fabric = fabric
        self._module = module
        self._step = self._fabric_step
        return self

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The user's own optimizer."""
        return self._optimizer

    def _fabric_step(self, closure: c.Callable[[], t.Any] | None = None, **kwargs: t.Any) -> t.Any:
        # The hot path: the step's whole logic is here, in one frame.
        fabric = self._fabric
        optimizer = self._optimizer
        if (
            not fabric._backward_calls
            and closure is None
            and fabric._precision.needs_fabric_backward
        ):
            raise RuntimeError(
                f"optimizer.step() ran but fabric.backward() was never called: the "
                f"{fabric._precision!r} precision scales the loss, so replace loss.backward() "
                "with fabric.backward(loss)"
            )
        if closure is not None:
            closure = _StepClosure(self, closure)
        else:
            unscale = fabric._unscale
            if unscale is not None:
                unscale(optimizer)
            if fabric._hear_before_step:
                fabric._bus.call(
                    "on_before_optimizer_step",
                    fabric=fabric,
                    trainer=fabric._trainer,
                    module=self._module,
                    optimizer=optimizer,
                )
        if fabric._phase_wrappers["optimizer_step"]:
            out = fabric._step_in_phase(optimizer, self._module, closure, kwargs)
        elif not fabric._direct_step:
            out = fabric._strategy.optimizer_step(optimizer, closure, **kwargs)
        elif closure is not None:
            out = optimizer.step(closure, **kwargs)
        elif kwargs:
            out = optimizer.step(**kwargs)
        else:
            out = optimizer.step()
        if fabric._hear_step:
            fabric._bus.call(
                "on_optimizer_step",
                fabric=fabric,
                trainer=fabric._trainer,
                module=self._module,
                optimizer=optimizer,
            )
        return out

    def _set_step(self, value: c.Callable[..., t.Any]) -> None:
        self._step = value

    def _del_step(self) -> None:
        self._step = self._fabric_step

    # ``step`` is a data descriptor, so that something replacing it on the wrapper (an LR
    # scheduler counting steps) replaces it on the wrapper only: written to the shared
    # dictionary it would shadow the original's own ``step``, which the wrapper's step ends by
    # calling; and a ``step`` patched onto the original cannot shadow the wrapper's. Reading it
    # runs no Python code (attrgetter).
    step = property(operator.attrgetter("_step"), _set_step, _del_step, doc="Step through Fabric.")

    def zero_grad(self, set_to_none: bool = True) -> None:
        fabric = self._fabric
        if fabric._hear_zero_grad:
            fabric._bus.call(
                "on_before_zero_grad",
                fabric=fabric,
                trainer=fabric._trainer,
                module=self._module,
                optimizer=self._optimizer,
            )
        if set_to_none:
            self._optimizer.zero_grad()
        else:
            self._optimizer.zero_grad(set_to_none=False)

    def state_dict(self) -> dict[str, t.Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, t.Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, t.Any]:
        # copy and pickle see the original's attributes plus the wrapper's own.
        state = dict(self.__dict__)
        state.update((name, getattr(self, name)) for name in FabricOptimizer.__slots__)
        return state

    def __setstate__(self, state: dict[str, t.Any]) -> None:
        # Not Optimizer.__setstate__: it would patch the wrapper class's ``step``.
        for name in FabricOptimizer.__slots__:
            object.__setattr__(self, name, state.pop(name, None))
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"FabricOptimizer({self._optimizer!r})"


class _StepClosure:
    """What a step with a closure runs: the user's closure, then unscaling and the hook.

    ``on_before_optimizer_step`` must see the gradients the closure computed, unscaled.
    """

    __slots__ = ("closure", "wrapped")

    def __init__(self, wrapped: FabricOptimizer, closure: c.Callable[[], t.Any]) -> None:
        self.wrapped, self.closure = wrapped, closure

    def __call__(self) -> t.Any:
        result = self.closure()
        wrapped = self.wrapped
        fabric = wrapped._fabric
        fabric._precision.unscale_gradients(wrapped._optimizer)
        if fabric._hear_before_step:
            fabric._bus.call(
                "on_before_optimizer_step",
                fabric=fabric,
                trainer=fabric._trainer,
                module=wrapped._module,
                optimizer=wrapped._optimizer,
            )
        return result


_classes: dict[type, type] = {}


def _wrapper_class(cls: type) -> type:
    # A subclass of both, so isinstance(wrapped, type(original)) holds; made once per type.
    made = _classes.get(cls)
    if made is None:
        made = type(f"Fabric{cls.__name__}", (FabricOptimizer, cls), {"__init__": None})
        _classes[cls] = made
    return made


class FabricDataLoader:
    """The user's dataloader (or any iterable), set up by Fabric: batches arrive on the device.

    Each ``iter()`` first sets the epoch of the sampler (and of the batch sampler's sampler), for
    ``DistributedSampler`` shuffling, then counts one epoch. Other attributes are the
    original's; ``dataloader`` is the original.
    """

    def __init__(self, dataloader: t.Any, fabric: Fabric, device: torch.device | None) -> None:
        self._dataloader = dataloader
        self._fabric = fabric
        self._device = device
        self._epoch = 0

    @property
    def dataloader(self) -> t.Any:
        """The user's own dataloader."""
        return self._dataloader

    @property
    def device(self) -> torch.device | None:
        """Where batches are moved (None: left where the dataloader puts them)."""
        return self._device

    def __len__(self) -> int:
        return len(self._dataloader)

    def __iter__(self) -> c.Iterator[t.Any]:
        loader = self._dataloader
        _set_sampler_epoch(loader, self._epoch)
        self._epoch += 1
        device = self._device
        if device is None:
            return iter(loader)
        return self._moved(loader, device)

    def _moved(self, loader: t.Any, device: torch.device) -> c.Iterator[t.Any]:
        to_device = self._fabric._strategy.batch_to_device
        for batch in loader:
            yield to_device(batch, device)

    def __getattr__(self, name: str) -> t.Any:
        try:
            loader = self.__dict__["_dataloader"]
        except KeyError:  # during copy/unpickling, before __init__ ran
            raise AttributeError(name) from None
        return getattr(loader, name)

    def __repr__(self) -> str:
        return f"FabricDataLoader({self._dataloader!r})"


def _set_sampler_epoch(loader: t.Any, epoch: int) -> None:
    seen: set[int] = set()
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(batch_sampler, "sampler", None), getattr(loader, "sampler", None)):
        if sampler is None or id(sampler) in seen:
            continue
        seen.add(id(sampler))
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def unwrap(obj: t.Any) -> t.Any:
    """The user's original object behind a Fabric wrapper (``obj`` itself otherwise)."""
    if isinstance(obj, FabricModule):
        return obj.module
    if isinstance(obj, FabricOptimizer):
        return obj.optimizer
    if isinstance(obj, FabricDataLoader):
        return obj.dataloader
    return obj
