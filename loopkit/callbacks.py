"""``Callback``: a base class with every declared hook as a do-nothing method.

Subclass it and override the hooks you need, with Lightning's signatures
(``on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx)``) or any subset of the
keyword arguments the hook passes. The defaults are marked with
:func:`loopkit.hooks.default_hook`, so the bus dispatches only to real overrides: subclassing
costs nothing on the hot path. Any object with hook-named methods works as a callback too; this
class is for discoverability.

This module never imports a plugin.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

from loopkit.hooks import default_hook

__all__ = ["Callback"]

_T = t.Any


class Callback:
    """Base class of trainer and Fabric callbacks; every hook of ``loopkit.hooks`` is here."""

    @property
    def state_key(self) -> str:
        """The key this callback's state is saved under in a checkpoint."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, t.Any]:
        """This callback's state, for checkpoints (empty by default)."""
        return {}

    def load_state_dict(self, state_dict: c.Mapping[str, t.Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @default_hook
    def on_fit_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_fit_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_epoch_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_epoch_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_batch_start(
        self, trainer: _T, pl_module: _T, batch: _T, batch_idx: int
    ) -> t.Any: ...

    @default_hook
    def on_train_batch_end(
        self, trainer: _T, pl_module: _T, outputs: _T, batch: _T, batch_idx: int
    ) -> None: ...

    @default_hook
    def on_validation_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_epoch_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_epoch_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_batch_start(
        self, trainer: _T, pl_module: _T, batch: _T, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    @default_hook
    def on_validation_batch_end(
        self,
        trainer: _T,
        pl_module: _T,
        outputs: _T,
        batch: _T,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...

    @default_hook
    def should_optimizer_step(self, trainer: _T, pl_module: _T, batch_idx: int) -> bool | None:
        """Return False to make this batch accumulate (no optimizer step)."""

    @default_hook
    def on_before_zero_grad(self, trainer: _T, pl_module: _T, optimizer: _T) -> None: ...

    @default_hook
    def on_before_backward(self, trainer: _T, pl_module: _T, loss: _T) -> None: ...

    @default_hook
    def on_after_backward(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_before_optimizer_step(self, trainer: _T, pl_module: _T, optimizer: _T) -> None: ...

    @default_hook
    def on_optimizer_step(self, trainer: _T, pl_module: _T, optimizer: _T) -> None: ...

    @default_hook
    def on_after_setup(self, fabric: _T, module: _T) -> None: ...

    @default_hook
    def on_save_checkpoint(self, trainer: _T, pl_module: _T, checkpoint: _T) -> None: ...

    @default_hook
    def on_load_checkpoint(self, trainer: _T, pl_module: _T, checkpoint: _T) -> None: ...

    @default_hook
    def on_exception(self, trainer: _T, pl_module: _T, exception: BaseException) -> None: ...
