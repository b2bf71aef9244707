"""Gradient accumulation: step the optimizer once every N batches, with one all-reduce per step.

The Trainer creates :class:`Accumulation` when ``accumulate_grad_batches != 1`` and asks it,
through the ``should_optimizer_step`` query hook, whether each batch steps; a Fabric loop uses
the same object as a context manager (``with accumulation(model, batch_idx, len(loader))``).
Either way the plugin acts only through the kernel's public seams: it divides each loss in the
backward phase and enters the strategy's ``no_backward_sync`` in the forward and backward phases
of the batches that do not step. It never steps an optimizer or zeroes a gradient itself, and
never imports another plugin.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import math
import typing as t
from dataclasses import dataclass

import torch
from torch import nn

from loopkit.plugins import Plugin
from loopkit.wrappers import FabricModule

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric, Phase

__all__ = ["Accumulation", "Window"]

__version__ = "0.1.0"

Schedule: t.TypeAlias = "int | c.Mapping[int, int]"


@dataclass(frozen=True)
class Window:
    """Where one batch stands in its accumulation window.

    ``size`` is the number every loss of the window is divided by: the window's length, the
    shorter last window of an epoch included, when the epoch's length is known in advance.
    ``steps`` says whether this batch ends the window, so the optimizer steps after it.
    ``rescale`` is set on the last batch of a window that ended earlier than ``size`` assumed
    (an epoch of unknown length): the gradients are multiplied by it before the step, so the step
    still applies the mean gradient of the batches the window really had.
    """

    size: int
    steps: bool
    position: int
    rescale: float | None = None


class Accumulation(Plugin):
    """Accumulate gradients over ``accumulate_grad_batches`` batches before each optimizer step.

    ``accumulate_grad_batches`` is a positive int, or a schedule ``{epoch: N}``: from that
    0-based epoch on, windows are N batches long (epochs before the first key use 1). The
    optimizer steps after every N-th batch of an epoch and after the epoch's last batch. Each
    loss is divided by the length of the window it belongs to, so every step applies the mean
    gradient of its window, a shorter last window included.
    """

    kind = "subscriber"

    def __init__(self, accumulate_grad_batches: Schedule = 1) -> None:
        self._schedule = _parse(accumulate_grad_batches)
        self._given = accumulate_grad_batches
        self._fabric: Fabric | None = None
        self._window: Window | None = None  # the window of the batch in progress, if any
        self._caller_syncs = False  # the Fabric-loop form entered no_backward_sync itself
        self._rescale: tuple[float, set[int]] | None = None

    def __repr__(self) -> str:
        return f"Accumulation(accumulate_grad_batches={self._given!r})"

    # -- the schedule ---------------------------------------------------------------------------

    @property
    def accumulate_grad_batches(self) -> Schedule:
        """What the plugin was created with (an int or the ``{epoch: N}`` schedule)."""
        return self._given

    def factor(self, epoch: int = 0) -> int:
        """The window length N in ``epoch`` (0-based)."""
        n = 1
        for start, value in self._schedule:
            if epoch >= start:
                n = value
        return n

    def window(
        self,
        batch_idx: int,
        num_batches: int | float | None = None,
        *,
        is_last_batch: bool = False,
        epoch: int = 0,
    ) -> Window:
        """The window of batch ``batch_idx`` (0-based, within its epoch).

        ``num_batches`` is the epoch's length when it is known (``len(dataloader)``); without it
        the shorter last window is found when ``is_last_batch`` says so and is corrected by
        rescaling the gradients before the step (:class:`Window`).
        """
        n = self.factor(epoch)
        position = batch_idx % n
        start = batch_idx - position
        end = start + n
        if _is_length(num_batches) and batch_idx < int(t.cast(float, num_batches)):
            end = min(end, int(t.cast(float, num_batches)))
        size = end - start
        steps = batch_idx + 1 == end or is_last_batch
        actual = position + 1
        rescale = size / actual if steps and actual != size else None
        return Window(size, steps, position, rescale)

    # -- attaching to a Fabric ------------------------------------------------------------------

    def attach(self, host: Fabric) -> None:
        self._fabric = host
        host.wrap_phase("forward", self._forward_phase)
        host.wrap_phase("backward", self._backward_phase)
        # The bus subscribes methods named ``on_*`` by themselves; a query hook is connected
        # explicitly (once, in case a later bus picks it up by name too).
        if self.should_optimizer_step not in host.bus.receivers("should_optimizer_step"):
            host.bus.connect(self.should_optimizer_step, "should_optimizer_step")

    # -- the Trainer's side (hooks) ---------------------------------------------------------

    def on_fit_start(self, trainer: t.Any = None, module: t.Any = None) -> None:
        if module is not None and getattr(module, "automatic_optimization", True) is False:
            raise ValueError(_manual_message(self._given, type(module).__name__))

    def should_optimizer_step(
        self, trainer: t.Any = None, module: t.Any = None, batch_idx: int = 0
    ) -> bool:
        """The query hook: whether this batch ends its window (False: it accumulates)."""
        window = self.window(
            batch_idx,
            getattr(trainer, "num_training_batches", None),
            is_last_batch=bool(getattr(trainer, "is_last_batch", False)),
            epoch=int(getattr(trainer, "current_epoch", 0) or 0),
        )
        self._begin(window)
        return window.steps

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Only reached with a pending rescale when a window ended earlier than assumed.
        pending = self._rescale
        if pending is None:
            return
        factor, done = pending
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None and id(p) not in done:
                        p.grad.mul_(factor)
                        done.add(id(p))

    def on_train_batch_end(self) -> None:
        self._window = None
        self._rescale = None

    def on_train_epoch_end(self) -> None:
        self._window = None
        self._rescale = None

    def on_exception(self) -> None:
        self._window = None
        self._rescale = None
        self._caller_syncs = False

    # -- the Fabric-loop form ---------------------------------------------------------------

    @contextlib.contextmanager
    def __call__(
        self,
        model: FabricModule | c.Sequence[FabricModule],
        batch_idx: int,
        num_batches: int | float | None = None,
        *,
        is_last_batch: bool = False,
        epoch: int = 0,
    ) -> c.Iterator[bool]:
        """Run one batch of a hand-written loop inside its window; yields whether to step.

        Inside the block every ``fabric.backward(loss)`` is divided by the window's length, and
        on batches that do not step gradient synchronisation of ``model`` (one set-up module, or
        several, as a GAN's) is suppressed. Step and zero the gradients after the block when it
        yielded True.
        """
        fabric = self._fabric
        if fabric is None:
            raise RuntimeError(
                f"{self!r} is not attached to a Fabric: pass it as Fabric(plugins=[accumulation]) "
                "or call fabric.add_plugin(accumulation) before using it in the loop"
            )
        models = [model] if isinstance(model, nn.Module) else list(model)
        for m in models:
            if not isinstance(m, FabricModule):
                raise TypeError(
                    f"accumulation(model, ...) needs the module(s) fabric.setup() returned, got "
                    f"{type(m).__name__}"
                )
        window = self.window(batch_idx, num_batches, is_last_batch=is_last_batch, epoch=epoch)
        self._begin(window)
        self._caller_syncs = True
        try:
            with contextlib.ExitStack() as stack:
                for m in models:
                    stack.enter_context(fabric.no_backward_sync(m, enabled=not window.steps))
                yield window.steps
        finally:
            # The pending rescale (if any) lives on until the user's optimizer.step().
            self._window = None
            self._caller_syncs = False

    # -- internals ----------------------------------------------------------------------------

    def _begin(self, window: Window) -> None:
        self._window = window
        self._rescale = (window.rescale, set()) if window.rescale is not None else None

    def _forward_phase(self, phase: Phase) -> contextlib.AbstractContextManager[t.Any]:
        window = self._window
        if window is None or window.steps or self._caller_syncs:
            return contextlib.nullcontext()
        return self._no_sync(phase.module)

    @contextlib.contextmanager
    def _backward_phase(self, phase: Phase) -> c.Iterator[None]:
        window = self._window
        if window is None:
            yield
            return
        if window.size != 1 and phase.loss is not None:
            phase.loss = phase.loss / window.size
        if window.steps or self._caller_syncs:
            yield
        else:
            with self._no_sync(phase.module):
                yield

    def _no_sync(self, module: nn.Module | None) -> contextlib.AbstractContextManager[t.Any]:
        fabric = self._fabric
        if fabric is None or module is None:
            return contextlib.nullcontext()
        # The wrapper is what the strategy's no_backward_sync acts on (the DDP object under ddp).
        wrapped = fabric.wrapped_module(module)
        if wrapped is not None:
            return fabric.no_backward_sync(wrapped, enabled=True)
        return fabric.strategy.no_backward_sync(module, enabled=True)


def _is_length(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0


def _parse(value: object) -> list[tuple[int, int]]:
    def bad(detail: str) -> ValueError:
        return ValueError(
            f"accumulate_grad_batches={value!r}: {detail}. Pass a positive int (step every N "
            "batches) or a dict {epoch: N} such as {0: 8, 4: 4} (from that 0-based epoch on, N)"
        )

    if isinstance(value, bool):
        raise bad("a bool is not a number of batches")
    if isinstance(value, int):
        if value < 1:
            raise bad("it must be at least 1")
        return [(0, value)]
    if isinstance(value, c.Mapping):
        if not value:
            raise bad("the schedule is empty")
        items = []
        for epoch, n in value.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise bad(f"key {epoch!r} is not a 0-based epoch number")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise bad(f"epoch {epoch} maps to {n!r}, not a positive int")
            items.append((epoch, n))
        return sorted(items)
    raise bad(f"got a {type(value).__name__}")


def _manual_message(given: object, module_name: str) -> str:
    return (
        f"accumulate_grad_batches={given!r} works in automatic optimization only, but "
        f"{module_name} sets automatic_optimization=False. Leave accumulate_grad_batches at 1 "
        "and accumulate in training_step yourself: divide the loss by N, call "
        "self.manual_backward(loss), and only when (batch_idx + 1) % N == 0 or "
        "self.trainer.is_last_batch call opt.step() and opt.zero_grad()"
    )
