"""The precision slot: what dtype modules, inputs, outputs and gradients have, and how.

The kernel embeds only ``"32-true"`` (:class:`Precision` itself, which changes nothing); mixed,
half and double precision come from the ``loopkit-precision`` distribution. A precision acts
through the three phases the kernel defines, and through nothing else:

* forward: :meth:`forward_context` wraps the module's forward; :meth:`convert_input` and
  :meth:`convert_output` cast what goes in and comes out.
* backward: :meth:`pre_backward` may transform the loss (a grad scaler scales it);
  :meth:`backward` runs autograd.
* optimizer step: :meth:`unscale_gradients` makes gradients true before anyone reads them
  (clipping, ``on_before_optimizer_step``); :meth:`optimizer_step` runs the step (a scaler may
  skip it) and returns what the optimizer returned.

Module set-up (:meth:`convert_module`, :meth:`module_init_context`) happens once, outside the
loop.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import torch

from loopkit.plugins import Plugin

__all__ = ["Precision"]


class Precision(Plugin):
    """Full float32 precision: every method is the identity. Base class of every precision."""

    kind = "precision"
    #: False lets the wrappers skip conversion and contexts entirely on the hot path.
    active: t.ClassVar[bool] = False
    #: True when ``loss.backward()`` called directly would be wrong (a grad scaler is in use).
    needs_fabric_backward: t.ClassVar[bool] = False
    #: The dtype parameters are kept in (``None``: whatever the module has).
    param_dtype: t.ClassVar[torch.dtype | None] = None

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def convert_input(self, data: t.Any) -> t.Any:
        return data

    def convert_output(self, data: t.Any) -> t.Any:
        return data

    def forward_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return contextlib.nullcontext()

    def module_init_context(self) -> contextlib.AbstractContextManager[t.Any]:
        """Context under which ``Fabric.init_module`` builds a module."""
        return contextlib.nullcontext()

    def tensor_init_context(self) -> contextlib.AbstractContextManager[t.Any]:
        """Context under which ``Fabric.init_tensor`` creates tensors."""
        return contextlib.nullcontext()

    def pre_backward(self, loss: torch.Tensor, module: torch.nn.Module | None) -> torch.Tensor:
        return loss

    def backward(
        self, loss: torch.Tensor, module: torch.nn.Module | None, *args: t.Any, **kwargs: t.Any
    ) -> None:
        loss.backward(*args, **kwargs)  # type: ignore[no-untyped-call]

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale (a no-op without a grad scaler).

        May be called more than once before a step (``clip_gradients``, then the step itself):
        only the first call after a backward may unscale. Fabric skips calling it when a
        precision does not override it.
        """

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: c.Callable[[], t.Any] | None = None,
        **kwargs: t.Any,
    ) -> t.Any:
        if closure is None:
            return optimizer.step(**kwargs)
        return optimizer.step(closure=closure, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plugin_name or '32-true'!r})"
