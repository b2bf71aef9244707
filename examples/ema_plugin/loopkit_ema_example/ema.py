"""The ``ema`` plugin: an exponential moving average of the weights of every module being trained.

It is written the way a third party writes a loopkit plugin: it imports only loopkit's public API
(a test parses this file to check), the averaging itself is torch's (``AveragedModel`` with
``get_ema_multi_avg_fn`` from :mod:`torch.optim.swa_utils`), and it changes the loop only through
hooks. It must never reach into loopkit's private names.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import itertools
import typing as t

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from loopkit.plugins import Plugin

__all__ = ["EMA"]

#: Bus priorities (higher runs first). The averaged weights go in before any other receiver of
#: ``on_validation_start`` runs and come out after the ordinary receivers of
#: ``on_validation_end``, so callbacks and the module see them during the whole validation run.
SWAP_IN_PRIORITY = 20_000
SWAP_OUT_PRIORITY = -15_000


class _Average:
    """One module being averaged: the live module, its averaged copy, and the steps counted."""

    __slots__ = ("module", "model", "steps", "backup")

    def __init__(self, module: nn.Module, model: AveragedModel) -> None:
        self.module = module
        self.model = model
        #: Optimizer steps of ``module`` seen so far (updates happen on some of them).
        self.steps = 0
        #: The live weights while the averaged ones are swapped in, else None.
        self.backup: list[torch.Tensor] | None = None


class EMA(Plugin):
    """Keep an exponential moving average of the weights; validate with it.

    Every module set up with trainable parameters (``fabric.setup(model, ...)``; the
    ``LoopModule`` a ``Trainer`` fits) gets an averaged copy. After an optimizer step of that module
    (hook ``on_optimizer_step``) the copy is updated as
    ``averaged = decay * averaged + (1 - decay) * weights``; the first update copies the weights.

    Between ``on_validation_start`` and ``on_validation_end`` the averaged weights are in the
    module; the trained ones are put back afterwards (and when an exception leaves the loop), so
    ``fit`` ends with the trained weights in the module. The averages are in
    :attr:`averaged_model` (one module) or :attr:`averaged_models` (several).

    :param decay: how much of the average each update keeps, between 0 and 1.
    :param update_every_n_steps: update after every N-th optimizer step of the module.
    :param update_starting_at_step: the first optimizer step (counted from 0) that updates.
    :param use_buffers: average the buffers too (batch-norm statistics), and swap them in.
    :param device: where to keep the averaged copies (default: where the module is).
    :param swap_for_validation: False keeps the trained weights in the module for validation.
    """

    kind = "subscriber"
    #: The name its state is saved under in Trainer checkpoints, however it was created.
    plugin_name = "ema"

    def __init__(
        self,
        decay: float = 0.999,
        *,
        update_every_n_steps: int = 1,
        update_starting_at_step: int = 0,
        use_buffers: bool = True,
        device: str | torch.device | None = None,
        swap_for_validation: bool = True,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise ValueError(
                f"EMA(decay={decay!r}): pass a number between 0 and 1; 0.999 keeps 99.9% of the "
                "average at each update"
            )
        for key, value, least in (
            ("update_every_n_steps", update_every_n_steps, 1),
            ("update_starting_at_step", update_starting_at_step, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"EMA({key}={value!r}): pass an int >= {least}")
        try:
            self.device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"EMA(device={device!r}): not a device; pass e.g. 'cpu' or 'cuda:0', or None to "
                "keep the average where the module is"
            ) from err
        self.decay = float(decay)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.use_buffers = use_buffers
        self.swap_for_validation = swap_for_validation
        self._averages: dict[int, _Average] = {}  # id(module) -> its average, in set-up order
        self._pending: dict[int, c.Mapping[str, t.Any]] = {}  # loaded before the module was set up
        self._swapped = False

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, averaging {len(self._averages)} module(s))"

    # -- what users read ----------------------------------------------------------------------

    @property
    def averaged_models(self) -> list[AveragedModel]:
        """The averaged copy of each module, in the order the modules were set up."""
        return [a.model for a in self._averages.values()]

    @property
    def averaged_model(self) -> AveragedModel:
        """The averaged copy of the module (call it like the module; ``.module`` is the copy)."""
        models = self.averaged_models
        if len(models) == 1:
            return models[0]
        if not models:
            raise RuntimeError(
                "EMA has no averaged model yet: it makes one when a module with trainable "
                "parameters is set up (fabric.setup(model, ...) or trainer.fit(module, ...))"
            )
        raise RuntimeError(
            f"EMA averages {len(models)} modules; use ema.averaged_models (in set-up order) or "
            "ema.averaged_model_of(module)"
        )

    def averaged_model_of(self, module: nn.Module) -> AveragedModel:
        """The averaged copy of ``module`` (the module you set up, or what setup returned)."""
        # What fabric.setup() returned holds the user's module as its .module attribute.
        for candidate in (module, getattr(module, "module", None)):
            average = self._averages.get(id(candidate))
            if average is not None:
                return average.model
        raise KeyError(
                f"EMA does not average this {type(module).__name__}: it averages the modules "
                "set up after the plugin joined, and those stepped by an optimizer"
            )

    @contextlib.contextmanager
    def use_averaged_weights(self) -> c.Iterator[None]:
        """Put the averaged weights into the modules for the block, the trained ones back after.

        Modules whose average was never updated keep their weights. This is what the plugin does
        around validation; call it yourself to evaluate anywhere else.
        """
        swapped = self._swap_in()
        try:
            yield
        finally:
            if swapped:
                self._swap_out()

    # -- the plugin contract --------------------------------------------------------------------

    def attach(self, host: t.Any) -> None:
        """Connect the validation receivers, with the priorities that bracket the other ones."""
        host.bus.connect(self._validation_start, "on_validation_start", priority=SWAP_IN_PRIORITY)
        host.bus.connect(self._validation_end, "on_validation_end", priority=SWAP_OUT_PRIORITY)

    def state_dict(self) -> dict[str, t.Any]:
        """Each average's state (tensors and counts: loadable with ``weights_only=True``)."""
        return {
            "averages": [
                {
                    "module": type(a.module).__qualname__,
                    "steps": a.steps,
                    "averaged_model": a.model.state_dict(),
                }
                for a in self._averages.values()
            ]
        }

    def load_state_dict(self, state: c.Mapping[str, t.Any]) -> None:
        """Restore :meth:`state_dict`; averages of modules not set up yet are restored at set-up."""
        entries = state.get("averages") if isinstance(state, c.Mapping) else None
        if not isinstance(entries, (list, tuple)):
            keys = sorted(state) if isinstance(state, c.Mapping) else type(state).__name__
            raise ValueError(
                f"EMA.load_state_dict() expects what EMA.state_dict() returns (a dict with "
                f"'averages'), got {keys}"
            )
        averages = list(self._averages.values())
        for index, entry in enumerate(entries):
            if index < len(averages):
                self._restore(index, averages[index], entry)
            else:
                self._pending[index] = entry

    # -- hooks --------------------------------------------------------------------------------

    def on_after_setup(self, module: nn.Module) -> None:
        if any(p.requires_grad for p in module.parameters()):
            self._average_of(module)

    def on_optimizer_step(self, module: nn.Module | None = None) -> None:
        # module is None when the optimizer spans several set-up modules: update them all.
        averages = list(self._averages.values()) if module is None else [self._average_of(module)]
        for average in averages:
            index = average.steps - self.update_starting_at_step
            average.steps += 1
            if index >= 0 and index % self.update_every_n_steps == 0:
                average.model.update_parameters(average.module)

    def on_exception(self) -> None:
        self._swap_out()  # an exception during validation must not leave averaged weights in

    def on_save_checkpoint(self, checkpoint: t.Any) -> None:
        # A checkpoint taken during validation keeps the trained weights as the module's: the
        # averaged ones are saved under the plugin's own name already.
        module_state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
        if not self._swapped or not isinstance(module_state, dict):
            return
        for average in self._averages.values():
            if average.backup is None:
                continue
            for name, trained in zip(self._names(average.module), average.backup):
                if name in module_state:
                    module_state[name] = trained.clone()

    def _validation_start(self) -> None:
        if self.swap_for_validation:
            self._swap_in()

    def _validation_end(self) -> None:
        self._swap_out()

    # -- internals ------------------------------------------------------------------------------

    def _average_of(self, module: nn.Module) -> _Average:
        average = self._averages.get(id(module))
        if average is None:
            model = AveragedModel(
                module,
                device=self.device,
                multi_avg_fn=get_ema_multi_avg_fn(self.decay),  # type: ignore[no-untyped-call]
                use_buffers=self.use_buffers,
            )
            model.requires_grad_(False)  # the copy is never trained: no autograd for it
            average = _Average(module, model)
            index = len(self._averages)
            self._averages[id(module)] = average
            pending = self._pending.pop(index, None)
            if pending is not None:
                self._restore(index, average, pending)
        return average

    def _restore(self, index: int, average: _Average, entry: c.Mapping[str, t.Any]) -> None:
        saved, here = entry.get("module"), type(average.module).__qualname__
        if saved != here:
            raise ValueError(
                f"the EMA state at position {index} averages a {saved}, but the module set up at "
                f"position {index} is a {here}; set the modules up in the order they had when "
                "the checkpoint was saved"
            )
        average.model.load_state_dict(entry["averaged_model"])
        average.steps = int(entry["steps"])

    def _tensors(self, module: nn.Module) -> list[torch.Tensor]:
        if self.use_buffers:
            return list(itertools.chain(module.parameters(), module.buffers()))
        return list(module.parameters())

    def _names(self, module: nn.Module) -> list[str]:
        names = [name for name, _ in module.named_parameters()]
        if self.use_buffers:
            names += [name for name, _ in module.named_buffers()]
        return names

    def _swap_in(self) -> bool:
        if self._swapped:
            return False
        with torch.no_grad():
            for average in self._averages.values():
                if int(average.model.n_averaged) == 0:
                    continue  # never updated: there is no average to validate with yet
                live = self._tensors(average.module)
                averaged = self._tensors(average.model.module)
                average.backup = [p.detach().clone() for p in live]
                for p, a in zip(live, averaged):
                    p.copy_(a)
        self._swapped = True
        return True

    def _swap_out(self) -> None:
        if not self._swapped:
            return
        with torch.no_grad():
            for average in self._averages.values():
                if average.backup is not None:
                    for p, trained in zip(self._tensors(average.module), average.backup):
                        p.copy_(trained)
                    average.backup = None
        self._swapped = False

