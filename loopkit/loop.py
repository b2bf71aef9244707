"""The minimal event-emitting loop: epochs, batches, validation at an interval, stop conditions.

:class:`FitLoop` knows nothing of optimizers, precision or logging. It walks the data, keeps the
counters in :class:`Progress`, asks a ``training_step(batch, batch_idx)`` callable to do the
batch's work, runs a ``validate()`` callable when validation is due, and fires the declared loop
hooks through a ``call(hook_name, **kwargs)`` callable (the bus's ``call``, or ``fabric.call``),
always with ``trainer=`` and ``module=``. ``loopkit.Trainer`` is one user of it; a bespoke
trainer can be another (see ``examples/bespoke_trainer.py``).

This module must never import a plugin, and its per-batch path does no introspection.
"""

from __future__ import annotations

import collections.abc as c
import itertools
import math
import typing as t
import warnings
from dataclasses import dataclass

__all__ = ["FitLoop", "Progress", "batches", "run_validation"]

Call = c.Callable[..., list[tuple[object, t.Any]]]


@dataclass
class Progress:
    """The loop's counters, in one small object so that a checkpoint can save and restore it.

    ``epoch`` is the index of the running epoch and, once an epoch ends, the number of epochs
    completed (after ``fit``, the number of epochs run). ``global_step`` counts batches on which
    at least one optimizer stepped, once per batch however many optimizers stepped.
    ``batch_idx`` is the current batch's index in its epoch; ``total_batches`` counts training
    batches over the whole run. ``stepped`` is set by whoever steps an optimizer during a batch.

    ``stage`` says where the loop stands, for a checkpoint taken from a hook: ``idle``,
    ``epoch_start``, ``batch``, ``batch_end``, ``epoch_end`` or ``ended`` (set by the loop before
    it fires the hook of that name; a trainer may add its own, ``validating`` say), and
    ``batches_done`` how many batches of the running epoch have reached ``on_train_batch_end``.
    Neither is in :meth:`state_dict`: a checkpoint records them beside it.
    """

    epoch: int = 0
    global_step: int = 0
    batch_idx: int = 0
    total_batches: int = 0
    is_last_batch: bool = False
    should_stop: bool = False
    stepped: bool = False
    stage: str = "idle"
    batches_done: int = 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_idx": self.batch_idx,
            "total_batches": self.total_batches,
        }

    def load_state_dict(self, state: c.Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.batch_idx = int(state.get("batch_idx", 0))
        self.total_batches = int(state.get("total_batches", 0))


def batches(
    data: c.Iterable[t.Any], limit: float, start: int = 0
) -> c.Iterator[tuple[int, t.Any, bool]]:
    """``(batch_idx, batch, is_last)`` for at most ``limit`` batches of ``data``.

    With a finite ``limit`` the last batch is known by its index; otherwise one batch is read
    ahead to know whether another follows. With ``start`` (a resumed epoch) the first ``start``
    batches are skipped: ``data.iter_from(start)`` gives the rest when ``data`` has that method
    (it may skip without loading them), otherwise they are read and dropped.
    """
    if start:
        iter_from = getattr(data, "iter_from", None)
        it = iter_from(start) if callable(iter_from) else itertools.islice(iter(data), start, None)
    else:
        it = iter(data)
    if limit != math.inf:
        n = int(limit)
        last = n - 1
        for i, batch in enumerate(itertools.islice(it, max(n - start, 0)), start):
            yield i, batch, i == last
        return
    try:
        batch = next(it)
    except StopIteration:
        return
    for i in itertools.count(start):
        try:
            following = next(it)
        except StopIteration:
            yield i, batch, True
            return
        yield i, batch, False
        batch = following


class FitLoop:
    """Epochs of batches until ``max_epochs``, ``max_steps`` or ``progress.should_stop``.

    :param call: fires a hook: ``call(name, **kwargs) -> [(receiver, result), ...]``.
    :param trainer: passed as ``trainer=`` to every hook (and ``module`` as ``module=``).
    :param max_epochs: None or -1 for no limit on epochs.
    :param max_steps: -1 (or None) for no limit on ``global_step``.
    :param val_every_n_batches: validate after every N training batches; None validates after
        the last batch of the epoch.
    :param val_every_n_epochs: validate only in every N-th epoch (None: every epoch, and
        ``val_every_n_batches`` then counts batches across epochs).
    """

    def __init__(
        self,
        call: Call,
        progress: Progress | None = None,
        *,
        trainer: t.Any = None,
        module: t.Any = None,
        max_epochs: int | None = None,
        max_steps: int | None = -1,
        val_every_n_batches: int | None = None,
        val_every_n_epochs: int | None = 1,
    ) -> None:
        if (max_epochs is None or max_epochs == -1) and (max_steps is None or max_steps == -1):
            raise ValueError(
                "neither max_epochs nor max_steps is set, so training would never end: pass "
                "max_epochs=N, max_steps=N, or max_epochs=-1 to train until should_stop is set"
            )
        self.call = call
        self.trainer, self.module = trainer, module
        self.progress = progress if progress is not None else Progress()
        self.max_epochs = -1 if max_epochs is None else max_epochs
        self.max_steps = -1 if max_steps is None else max_steps
        self.val_every_n_batches = val_every_n_batches
        self.val_every_n_epochs = val_every_n_epochs
        self._resume: tuple[int, bool, bool] | None = None

    def resume(self, batches_done: int, is_last: bool, checks_pending: bool) -> None:
        """Make the next :meth:`run` continue the epoch ``progress.epoch`` after its first
        ``batches_done`` batches (a checkpoint taken part-way through it).

        ``is_last``: the last of them was the epoch's last batch. ``checks_pending``: what follows
        a batch (validation when due, the stop conditions) has not run for it yet. The resumed
        epoch fires ``on_train_epoch_start`` again.
        """
        self._resume = (batches_done, is_last, checks_pending)

    def _after_batch(
        self, batch_idx: int, is_last: bool, validate: c.Callable[[], t.Any] | None
    ) -> bool:
        """Validate when due; whether the epoch ends here (a stop condition holds)."""
        if validate is not None and self._val_due(batch_idx, is_last):
            validate()
        return self.progress.should_stop or self.steps_done()

    def steps_done(self) -> bool:
        return 0 <= self.max_steps <= self.progress.global_step

    def epochs_done(self) -> bool:
        return 0 <= self.max_epochs <= self.progress.epoch

    def _val_epoch(self) -> bool:
        n = self.val_every_n_epochs
        return n is None or (self.progress.epoch + 1) % n == 0

    def _val_due(self, batch_idx: int, is_last: bool) -> bool:
        p, every = self.progress, self.val_every_n_batches
        if not self._val_epoch():
            return False
        if p.should_stop:
            return True  # a stop requested by training still gets the epoch's validation
        if every is None:
            return is_last
        if self.val_every_n_epochs is None:
            return p.total_batches % every == 0
        return (batch_idx + 1) % every == 0

    def run(
        self,
        data: c.Iterable[t.Any],
        training_step: c.Callable[[t.Any, int], t.Any],
        validate: c.Callable[[], t.Any] | None = None,
        num_batches: float = math.inf,
    ) -> None:
        """Train on ``data`` (at most ``num_batches`` batches per epoch) until a stop condition."""
        p, call, tr, mod = self.progress, self.call, self.trainer, self.module
        call("on_train_start", trainer=tr, module=mod)
        resume, self._resume = self._resume, None
        while resume is not None or not (self.epochs_done() or self.steps_done() or p.should_stop):
            p.stage, p.batches_done = "epoch_start", 0
            call("on_train_epoch_start", trainer=tr, module=mod)
            ran, steps_before = 0, p.global_step
            start, ended = 0, False
            if resume is not None:  # a resumed epoch: its first `start` batches are done
                start, last_done, pending = resume
                resume = None
                ended = self._after_batch(start - 1, last_done, validate) if pending else False
                ended = ended or last_done or p.should_stop or self.steps_done()
            for batch_idx, batch, is_last in () if ended else batches(data, num_batches, start):
                p.batch_idx, p.is_last_batch = batch_idx, is_last
                p.stage, p.batches_done = "batch", batch_idx
                answers = call(
                    "on_train_batch_start", trainer=tr, module=mod, batch=batch, batch_idx=batch_idx
                )
                if answers and _ends_epoch(answers):
                    break
                p.stepped = False
                outputs = training_step(batch, batch_idx)
                if p.stepped:
                    p.global_step += 1
                p.total_batches += 1
                ran += 1
                p.stage, p.batches_done = "batch_end", batch_idx + 1
                call(
                    "on_train_batch_end",
                    trainer=tr, module=mod, outputs=outputs, batch=batch, batch_idx=batch_idx,
                )  # fmt: skip
                # _after_batch(), inlined: this runs every batch.
                if validate is not None and self._val_due(batch_idx, is_last):
                    validate()
                if p.should_stop or 0 <= self.max_steps <= p.global_step:
                    break
            p.stage = "epoch_end"
            call("on_train_epoch_end", trainer=tr, module=mod)
            p.epoch += 1
            stuck = start == 0 and p.global_step == steps_before and not p.should_stop
            if self.max_epochs == -1 and self.max_steps >= 0 and stuck:
                # Without max_epochs only steps end training: an epoch without one never would.
                warnings.warn(
                    f"an epoch of {ran} batch(es) took no optimizer step and max_epochs is not "
                    "set, so max_steps would never be reached; stopping here",
                    UserWarning,
                    stacklevel=2,
                )
                break
        p.stage = "ended"
        call("on_train_end", trainer=tr, module=mod)


def _ends_epoch(answers: list[tuple[object, t.Any]]) -> bool:
    # A receiver of on_train_batch_start returning -1 ends the epoch (as in Lightning). A plain
    # loop: this runs every batch on which on_train_batch_start has receivers.
    for _, answer in answers:  # noqa: SIM110 (no generator object per batch)
        if type(answer) is int and answer == -1:
            return True
    return False


def run_validation(
    call: Call,
    loaders: c.Sequence[c.Iterable[t.Any]],
    validation_step: c.Callable[[t.Any, int, int], t.Any],
    limits: c.Sequence[float],
    *,
    trainer: t.Any = None,
    module: t.Any = None,
) -> None:
    """One validation run over ``loaders`` (at most ``limits[i]`` batches of loader ``i``)."""
    tr, mod = trainer, module
    call("on_validation_start", trainer=tr, module=mod)
    call("on_validation_epoch_start", trainer=tr, module=mod)
    for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
        for batch_idx, batch, _ in batches(loader, limit):
            call(
                "on_validation_batch_start",
                trainer=tr, module=mod, batch=batch, batch_idx=batch_idx,
                dataloader_idx=dataloader_idx,
            )  # fmt: skip
            outputs = validation_step(batch, batch_idx, dataloader_idx)
            call(
                "on_validation_batch_end",
                trainer=tr, module=mod, outputs=outputs, batch=batch, batch_idx=batch_idx,
                dataloader_idx=dataloader_idx,
            )  # fmt: skip
    call("on_validation_epoch_end", trainer=tr, module=mod)
    call("on_validation_end", trainer=tr, module=mod)
