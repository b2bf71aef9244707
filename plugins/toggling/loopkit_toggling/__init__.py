"""Optimizer toggling: while one optimizer trains, parameters only other optimizers own are frozen.

``LoopModule.toggle_optimizer``/``untoggle_optimizer``, ``optimizer.toggle_model()`` and the
Trainer's automatic optimization with several optimizers all delegate here; Fabric loops use the
plugin directly (``Fabric(plugins=["toggling"])``). Toggling only ever changes
``requires_grad`` and always puts back exactly what it found; it never touches a parameter's value
or gradient, and never imports another plugin.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import torch
from torch import nn

from loopkit.plugins import Plugin
from loopkit.wrappers import FabricModule, unwrap

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric

__all__ = ["Toggling"]

__version__ = "0.1.0"


class _Toggle:
    """One active toggle: the optimizer and each parameter's ``requires_grad`` before it."""

    __slots__ = ("optimizer", "saved")

    def __init__(
        self, optimizer: torch.optim.Optimizer, saved: dict[int, tuple[nn.Parameter, bool]]
    ) -> None:
        self.optimizer = optimizer
        self.saved = saved


class Toggling(Plugin):
    """Freeze the parameters of every other optimizer while one optimizer is being trained.

    While ``optimizer`` is toggled, each parameter held by one of ``all_optimizers`` but not by
    ``optimizer`` has ``requires_grad=False``; the parameters of ``optimizer`` (those it shares
    with others included) keep the flag they had before any toggle. Parameters no optimizer
    holds are left alone. Untoggling restores every flag exactly.

    Toggles nest: toggling B while A is toggled trains B (with the flags from before A), and
    untoggling B returns to A's state. Untoggle in the reverse order. ``module`` is the model the
    optimizers train (one module, the modules of a GAN, or None): it is only needed to suppress
    gradient synchronisation (``sync_grad=False``).
    """

    kind = "subscriber"

    def __init__(self) -> None:
        self._fabric: Fabric | None = None
        self._active: list[_Toggle] = []  # innermost last

    def attach(self, host: Fabric) -> None:
        self._fabric = host

    # -- the paired form ----------------------------------------------------------------------

    def toggle_optimizer(
        self,
        module: _Modules,
        optimizer: torch.optim.Optimizer,
        all_optimizers: c.Iterable[torch.optim.Optimizer],
    ) -> None:
        """Freeze the parameters that only the other optimizers in ``all_optimizers`` hold."""
        _modules(module)
        current = _optimizer(optimizer, "optimizer")
        others = [_optimizer(o, "all_optimizers") for o in _iterable(all_optimizers)]
        # The flags before the outermost toggle are the ones the current optimizer trains with.
        before_any = self._active[0].saved if self._active else {}
        own = {id(p): p for p in _parameters(current)}
        saved: dict[int, tuple[nn.Parameter, bool]] = {}
        for opt in others:
            if opt is current:
                continue
            for p in _parameters(opt):
                if id(p) in own or id(p) in saved:
                    continue
                saved[id(p)] = (p, p.requires_grad)
                p.requires_grad = False
        for pid, p in own.items():
            saved[pid] = (p, p.requires_grad)
            p.requires_grad = before_any.get(pid, (p, p.requires_grad))[1]
        self._active.append(_Toggle(current, saved))

    def untoggle_optimizer(self, module: _Modules, optimizer: torch.optim.Optimizer) -> None:
        """Restore the ``requires_grad`` flags that :meth:`toggle_optimizer` changed."""
        current = _optimizer(optimizer, "optimizer")
        if not any(tg.optimizer is current for tg in self._active):
            raise RuntimeError(
                f"untoggle_optimizer({type(current).__name__}) was called, but that optimizer is "
                "not toggled: call toggle_optimizer(optimizer) first, or use the "
                "context-manager form `with optimizer.toggle_model():`"
            )
        if self._active[-1].optimizer is not current:
            inner = type(self._active[-1].optimizer).__name__
            raise RuntimeError(
                f"untoggle_optimizer({type(current).__name__}) while {inner} is still toggled "
                f"inside it; untoggle {inner} first (toggles nest, innermost first)"
            )
        self._pop()

    # -- the context-manager form -------------------------------------------------------------

    @contextlib.contextmanager
    def toggled(
        self,
        module: _Modules,
        optimizer: torch.optim.Optimizer,
        all_optimizers: c.Iterable[torch.optim.Optimizer],
        sync_grad: bool = True,
        fabric: Fabric | None = None,
    ) -> c.Iterator[None]:
        """Toggle ``optimizer`` for the block; restore the flags on exit, even on an exception.

        With ``sync_grad=False`` gradient synchronisation of ``module`` is also suppressed in
        the block (through the strategy's ``no_backward_sync``): the backward passes of an
        accumulation window that does not step yet need no all-reduce.
        """
        self.toggle_optimizer(module, optimizer, all_optimizers)
        mark = len(self._active)
        try:
            with self._no_sync(module, fabric, enabled=not sync_grad):
                yield
        finally:
            # Unwind to this block's own toggle, inner toggles left open by an exception too.
            while len(self._active) >= mark:
                self._pop()

    # -- hooks --------------------------------------------------------------------------------

    def on_exception(self) -> None:
        """An exception is leaving the loop: restore every flag a paired toggle left changed."""
        self.restore_all()

    def restore_all(self) -> None:
        """Untoggle everything still toggled, innermost first."""
        while self._active:
            self._pop()

    def is_toggled(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Whether ``optimizer`` (or, without it, any optimizer) is toggled now."""
        if optimizer is None:
            return bool(self._active)
        current = unwrap(optimizer)
        return any(tg.optimizer is current for tg in self._active)

    # -- internals ----------------------------------------------------------------------------

    def _pop(self) -> None:
        toggle = self._active.pop()
        for p, flag in toggle.saved.values():
            p.requires_grad = flag

    def _no_sync(
        self, module: _Modules, fabric: Fabric | None, enabled: bool
    ) -> contextlib.AbstractContextManager[t.Any]:
        if not enabled:
            return contextlib.nullcontext()
        fabric = fabric if fabric is not None else self._fabric
        stack = contextlib.ExitStack()
        for m in _modules(module):
            if isinstance(m, FabricModule):
                stack.enter_context(m._fabric.no_backward_sync(m, enabled=True))
                continue
            if fabric is None:
                continue  # nothing was set up through a Fabric: no strategy synchronises
            wrapped = _wrapped(fabric, m)
            if wrapped is not None:
                stack.enter_context(fabric.no_backward_sync(wrapped, enabled=True))
            else:
                stack.enter_context(fabric.strategy.no_backward_sync(m, enabled=True))
        return stack


_Modules: t.TypeAlias = "nn.Module | c.Sequence[nn.Module] | None"


def _modules(module: object) -> list[nn.Module]:
    if module is None:
        return []
    items = [module] if isinstance(module, nn.Module) else module
    if not isinstance(items, (list, tuple)) or not all(isinstance(m, nn.Module) for m in items):
        raise TypeError(
            "toggling: module must be the model (a torch.nn.Module), a list of models or None, "
            f"got {type(module).__name__}"
        )
    return list(items)


def _optimizer(opt: t.Any, what: str) -> torch.optim.Optimizer:
    raw = unwrap(opt)
    if not isinstance(raw, torch.optim.Optimizer):
        raise TypeError(
            f"toggling: {what} must hold torch optimizers (or the ones fabric.setup returned), "
            f"got {type(opt).__name__}"
        )
    return raw


def _iterable(all_optimizers: t.Any) -> list[t.Any]:
    if all_optimizers is None or isinstance(all_optimizers, torch.optim.Optimizer):
        raise TypeError(
            "toggling needs all_optimizers, the list of every optimizer of the model (e.g. "
            f"[opt_g, opt_d]); got {all_optimizers!r}"
        )
    return list(all_optimizers)


def _parameters(opt: torch.optim.Optimizer) -> c.Iterator[nn.Parameter]:
    for group in opt.param_groups:
        yield from group["params"]


def _wrapped(fabric: Fabric, module: nn.Module) -> FabricModule | None:
    """The FabricModule ``fabric.setup`` made of ``module`` (so DDP gets its own wrapper)."""
    return fabric.wrapped_module(module)
