"""The catalogue of hooks loopkit's loops fire: names, parameters, and when each fires.

This module is data. It imports nothing heavy and runs nothing: the bus (:mod:`loopkit.events`)
reads it to validate receivers at connect time and to suggest the right name for a misspelt one.
It must never import torch or any other part of loopkit.

The whole loop, as the Trainer runs it, with every hook where it fires::

    on_fit_start
    on_train_start
    for epoch in epochs:                       # until max_epochs, max_steps or should_stop
        on_train_epoch_start
        for batch_idx, batch in train_dataloader:
            on_train_batch_start               # a receiver returning -1 ends the epoch early
            should_optimizer_step              # query: any receiver returning False makes this
                                               # batch accumulate (backward, but no step and
                                               # no zero_grad)
            # automatic optimization, for each optimizer (optimizer.step runs the closure):
                out = training_step(batch, batch_idx[, optimizer_idx])
                on_before_zero_grad            # only when this batch steps
                optimizer.zero_grad()
                on_before_backward             # loss as the loop will differentiate it
                backward(loss)                 # inside the "backward" phase contexts
                on_after_backward              # gradients populated (still scaled under 16-mixed)
                on_before_optimizer_step       # gradients unscaled, before clipping
                optimizer.step()               # inside the "optimizer_step" phase contexts
                on_optimizer_step              # after the step: the weights have changed
            on_train_batch_end
            if validation is due:
                on_validation_start
                on_validation_epoch_start
                for batch_idx, batch in val_dataloader:
                    on_validation_batch_start
                    validation_step(batch, batch_idx)
                    on_validation_batch_end
                on_validation_epoch_end
                on_validation_end
        on_train_epoch_end
    on_train_end
    on_fit_end

    on_after_setup                             # fabric.setup() has wrapped a module
    on_save_checkpoint                         # a checkpoint dict is being assembled
    on_load_checkpoint                         # a checkpoint dict is being restored
    on_exception                               # an exception is leaving the loop

In manual optimization the loop calls ``training_step`` and nothing of the optimizer block: the
step hooks fire when the user calls ``manual_backward`` and ``optimizer.step()`` themselves.

A Fabric loop is written by the user. Fabric itself fires only the hooks of
:data:`FABRIC_FIRES`: ``on_after_setup`` in ``setup``, ``on_before_backward`` and
``on_after_backward`` in ``fabric.backward``, ``on_before_zero_grad`` in
``optimizer.zero_grad``, ``on_before_optimizer_step`` and ``on_optimizer_step`` in
``optimizer.step``. Every other name, declared here or not, is the user's to fire with
``fabric.call``, with whatever arguments the user passes.

Which hooks still fire when training stops early or fails:

========================  ==========  =====================  ======================  ==========
hook                      normal end  ``max_steps`` reached  batch start returns -1  exception
                                      or ``should_stop``
========================  ==========  =====================  ======================  ==========
on_train_batch_end        yes         yes, for that batch    no, for that batch      no
on_validation_* (if due)  yes         yes                    no, rest of the epoch   no
on_train_epoch_end        yes         yes                    yes                     no
on_train_end              yes         yes                    yes (at the end)        no
on_fit_end                yes         yes                    yes (at the end)        no
on_exception              no          no                     no                      yes
========================  ==========  =====================  ======================  ==========

``should_stop`` (set by a callback or the module) and ``max_steps`` are read after every batch:
the current batch finishes, ``on_train_epoch_end`` fires, and training ends as if
``max_epochs`` were reached. A receiver of ``on_train_batch_start`` returning ``-1`` skips the
rest of the current epoch (that batch, its validation, the epoch's remaining batches) and
``on_train_epoch_end`` fires; the next epoch starts as usual. When an exception (a
``KeyboardInterrupt`` included) leaves the loop, ``on_exception`` fires with it and the
exception is then re-raised unchanged; no ``*_end`` hook fires after it. An exception raised by
a receiver carries a note naming the receiver and the hook (see :mod:`loopkit.events`).

Parameters: every hook is fired with keyword arguments; a receiver takes any subset of them by
naming them (``pl_module`` is accepted as an alias of ``module``, as Lightning callbacks spell
it). In a Fabric loop ``trainer`` is ``None``.
"""

from __future__ import annotations

import collections.abc as c
import typing as t
from dataclasses import dataclass

__all__ = [
    "ALIASES",
    "FABRIC_FIRES",
    "HOOKS",
    "TRAINER_FIRES",
    "HookSpec",
    "default_hook",
    "is_default_hook",
]

_F = t.TypeVar("_F", bound=c.Callable[..., t.Any])


@dataclass(frozen=True, slots=True)
class HookSpec:
    """A declared hook: its name, the keyword arguments the kernel passes, and when it fires.

    ``returns`` is empty for a notification (what receivers return is ignored) and says what the
    loop does with the results for a query such as ``should_optimizer_step``.
    """

    name: str
    params: tuple[str, ...]
    fires: str
    returns: str = ""


def _spec(name: str, params: str, fires: str, returns: str = "") -> tuple[str, HookSpec]:
    return name, HookSpec(name, tuple(params.split()), fires, returns)


_LOOP = "trainer module"
_STEP = "fabric trainer module"

#: Every hook the kernel's loops fire, by name, in the order the loop reaches them.
HOOKS: c.Mapping[str, HookSpec] = dict(
    [
        _spec("on_fit_start", _LOOP, "first thing in fit(), after setup"),
        _spec("on_fit_end", _LOOP, "last thing in fit()"),
        _spec("on_train_start", _LOOP, "before the first training epoch"),
        _spec("on_train_end", _LOOP, "after the last training epoch"),
        _spec("on_train_epoch_start", _LOOP, "at the start of each training epoch"),
        _spec("on_train_epoch_end", _LOOP, "at the end of each training epoch"),
        _spec(
            "on_train_batch_start",
            f"{_LOOP} batch batch_idx",
            "before training_step",
            "-1 from any receiver skips the rest of the epoch",
        ),
        _spec("on_train_batch_end", f"{_LOOP} outputs batch batch_idx", "after the batch's step"),
        _spec("on_validation_start", _LOOP, "before a validation run"),
        _spec("on_validation_end", _LOOP, "after a validation run"),
        _spec("on_validation_epoch_start", _LOOP, "before the first validation batch"),
        _spec("on_validation_epoch_end", _LOOP, "after the last validation batch"),
        _spec(
            "on_validation_batch_start",
            f"{_LOOP} batch batch_idx dataloader_idx",
            "before validation_step",
        ),
        _spec(
            "on_validation_batch_end",
            f"{_LOOP} outputs batch batch_idx dataloader_idx",
            "after validation_step",
        ),
        _spec(
            "should_optimizer_step",
            f"{_LOOP} batch_idx",
            "before training_step, in automatic optimization",
            "False from any receiver makes this batch accumulate: no step, no zero_grad",
        ),
        _spec("on_before_zero_grad", f"{_STEP} optimizer", "before optimizer.zero_grad()"),
        _spec("on_before_backward", f"{_STEP} loss", "before the backward pass"),
        _spec("on_after_backward", _STEP, "after the backward pass"),
        _spec(
            "on_before_optimizer_step", f"{_STEP} optimizer", "before optimizer.step(), unscaled"
        ),
        _spec("on_optimizer_step", f"{_STEP} optimizer", "after optimizer.step() has run"),
        _spec("on_after_setup", "fabric module", "after fabric.setup() wrapped a module"),
        _spec("on_save_checkpoint", f"{_LOOP} checkpoint", "when a checkpoint is assembled"),
        _spec("on_load_checkpoint", f"{_LOOP} checkpoint", "when a checkpoint is restored"),
        _spec("on_exception", f"{_LOOP} exception", "when an exception leaves the loop"),
    ]
)

#: Hooks a plain Fabric fires itself; every other name is fired by the user with ``call``.
FABRIC_FIRES: frozenset[str] = frozenset(
    {
        "on_after_setup",
        "on_before_backward",
        "on_after_backward",
        "on_before_zero_grad",
        "on_before_optimizer_step",
        "on_optimizer_step",
    }
)

#: Hooks a Trainer built on the kernel's loop fires itself: every declared hook.
TRAINER_FIRES: frozenset[str] = frozenset(HOOKS)

#: Receiver parameter names accepted in place of a hook's own parameter name.
ALIASES: c.Mapping[str, str] = {"pl_module": "module"}

_DEFAULT_MARK = "__loopkit_default_hook__"


def default_hook(fn: _F) -> _F:
    """Mark a base-class hook method as a do-nothing default.

    The bus does not subscribe methods so marked, so a base class (``Callback``, ``LoopModule``)
    can define every hook for discoverability while dispatch only reaches real overrides.
    """
    setattr(fn, _DEFAULT_MARK, True)
    return fn


def is_default_hook(fn: object) -> bool:
    """Whether ``fn`` (a function or bound method) is a default marked by :func:`default_hook`."""
    return getattr(getattr(fn, "__func__", fn), _DEFAULT_MARK, False) is True
