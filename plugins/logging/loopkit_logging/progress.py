"""Progress bars on tqdm: ``ProgressBar`` for the Trainer, :func:`track` for Fabric loops.

A bar shows the epoch, the batch count (of the total when the loader has a length), the rate,
and the metrics logged with ``prog_bar=True``. It is shown only on global rank zero and only when
its stream (``sys.stderr`` by default) is a terminal: under a pipe, a file, a CI log or any other
rank nothing of it is printed, so several processes never fight over one terminal.
"""

from __future__ import annotations

import collections.abc as c
import math
import numbers
import sys
import time
import typing as t

from loopkit.plugins import Plugin
from loopkit_logging._base import global_rank
from loopkit_logging._output import is_terminal

__all__ = ["ProgressBar", "Tracker", "track"]

_T = t.TypeVar("_T")


def _enabled(stream: t.Any, host: object | None) -> bool:
    return global_rank(host) == 0 and is_terminal(stream)


def _total(value: t.Any) -> int | None:
    """A bar's total from a batch count (an int, a list of ints per dataloader, inf, None)."""
    if isinstance(value, (list, tuple)):
        counts = [_total(v) for v in value]
        return None if any(v is None for v in counts) else sum(t.cast(list[int], counts))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    if math.isinf(number) or math.isnan(number) or number < 0:
        return None
    return int(number)


def _postfix(metrics: c.Mapping[str, t.Any] | None) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {}
    for name, value in (metrics or {}).items():
        if value is None:
            continue
        item = getattr(value, "item", None)
        if callable(item):
            try:
                value = item()
            except (RuntimeError, ValueError):  # not a one-element tensor: not shown
                continue
        out[str(name)] = value
    return out


def _bar(**kwargs: t.Any) -> t.Any:
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)


class ProgressBar(Plugin):
    """The Trainer's progress bar (plugin name ``"progress_bar"``).

    The Trainer attaches it when ``enable_progress_bar=True`` and loopkit-logging is installed.
    One bar per training epoch (``Epoch N``) and a transient one while validation runs.

    :param refresh_rate: update the bar every N batches (``0`` turns it off).
    :param stream: where bars are drawn (default: ``sys.stderr`` when training starts).
    :param leave: keep each finished epoch's bar on screen.
    """

    kind = "subscriber"

    def __init__(
        self, refresh_rate: int = 1, stream: t.TextIO | None = None, leave: bool = True
    ) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"refresh_rate={refresh_rate!r}: pass an int >= 0 (0 turns it off)")
        self.refresh_rate = refresh_rate
        self.leave = leave
        self._stream = stream
        self._host: t.Any = None
        self._enabled = False
        self._train_bar: t.Any = None
        self._val_bar: t.Any = None
        self._since_refresh = 0
        self._postfix_time = -math.inf

    @property
    def enabled(self) -> bool:
        """Whether bars are being drawn in this run (decided when training starts)."""
        return self._enabled

    @property
    def stream(self) -> t.Any:
        return self._stream if self._stream is not None else sys.stderr

    def attach(self, host: t.Any) -> None:
        self._host = host

    def _decide(self, trainer: t.Any) -> None:
        self._enabled = self.refresh_rate > 0 and _enabled(self.stream, trainer or self._host)

    # -- training ---------------------------------------------------------------------------

    def on_train_start(self, trainer: t.Any = None) -> None:
        self._decide(trainer)

    def on_train_epoch_start(self, trainer: t.Any = None) -> None:
        if not self._enabled:
            return
        self._close_bars()
        epoch = getattr(trainer, "current_epoch", 0)
        self._train_bar = _bar(
            total=_total(getattr(trainer, "num_training_batches", None)),
            desc=f"Epoch {epoch}",
            file=self.stream,
            leave=self.leave,
            unit="it",
        )
        self._since_refresh = 0
        self._postfix_time = -math.inf

    def on_train_batch_end(self, trainer: t.Any = None) -> None:
        bar = self._train_bar
        if bar is None:
            return
        self._since_refresh += 1
        if self._since_refresh >= self.refresh_rate:
            # Reading metrics may synchronise with an accelerator (tensor.item()): do it only
            # as often as the bar can redraw, not on every batch.
            now = time.monotonic()
            if now - self._postfix_time >= bar.mininterval:
                metrics = _postfix(getattr(trainer, "progress_bar_metrics", None))
                bar.set_postfix(metrics, refresh=False)
                self._postfix_time = now
            bar.update(self._since_refresh)
            self._since_refresh = 0

    def on_train_epoch_end(self, trainer: t.Any = None) -> None:
        bar = self._train_bar
        if bar is None:
            return
        if self._since_refresh:
            bar.update(self._since_refresh)
            self._since_refresh = 0
        # Epoch-level values (reduced at the epoch end) are in the metrics now.
        bar.set_postfix(_postfix(getattr(trainer, "progress_bar_metrics", None)), refresh=False)
        bar.close()
        self._train_bar = None

    def on_train_end(self) -> None:
        self._close_bars()

    # -- validation -------------------------------------------------------------------------

    def on_validation_start(self, trainer: t.Any = None) -> None:
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        if self._train_bar is None:  # a validation run on its own decides for itself
            self._decide(trainer)
        if not self._enabled:
            return
        total = getattr(trainer, "num_val_batches", None)
        self._val_bar = _bar(
            total=_total(total), desc="Validation", file=self.stream, leave=False, unit="it"
        )

    def on_validation_batch_end(self) -> None:
        if self._val_bar is not None:
            self._val_bar.update(1)

    def on_validation_end(self, trainer: t.Any = None) -> None:
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        if self._train_bar is not None:
            metrics = _postfix(getattr(trainer, "progress_bar_metrics", None))
            self._train_bar.set_postfix(metrics)

    # -- ending -----------------------------------------------------------------------------

    def on_exception(self) -> None:
        self._close_bars()

    def _close_bars(self) -> None:
        for bar in (self._val_bar, self._train_bar):
            if bar is not None:
                bar.close()
        self._val_bar = self._train_bar = None


class Tracker(t.Generic[_T]):
    """An iterable that draws a progress bar while it is iterated (see :func:`track`)."""

    def __init__(
        self,
        iterable: c.Iterable[_T],
        *,
        desc: str | None,
        total: int | None,
        stream: t.TextIO | None,
        leave: bool,
        enabled: bool,
    ) -> None:
        self._iterable = iterable
        self._kwargs = {"desc": desc, "total": total, "leave": leave, "unit": "it"}
        self._stream = stream
        self.enabled = enabled
        self._bar: t.Any = None
        self._pending: dict[str, t.Any] | None = None
        self._shown_at = -math.inf

    def __iter__(self) -> c.Iterator[_T]:
        if not self.enabled:
            yield from self._iterable
            return
        stream = self._stream if self._stream is not None else sys.stderr
        kwargs = dict(self._kwargs)
        if kwargs["total"] is None and isinstance(self._iterable, c.Sized):
            kwargs["total"] = len(self._iterable)
        bar = self._bar = _bar(file=stream, **kwargs)
        self._shown_at = -math.inf
        try:
            for item in self._iterable:
                yield item
                bar.update(1)  # after the loop's body: counts finished iterations
        finally:
            if self._pending is not None:  # the last values set, shown on the final line
                bar.set_postfix(_postfix(self._pending), refresh=False)
                self._pending = None
            bar.close()

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]

    def set_metrics(self, metrics: c.Mapping[str, t.Any] | None = None, **more: t.Any) -> None:
        """Show these metrics after the bar (tensors are read with ``.item()``).

        Values are read only as often as the bar redraws, so calling this on every batch does
        not synchronise with an accelerator on every batch.
        """
        if self._bar is None:
            return
        self._pending = {**(metrics or {}), **more}
        now = time.monotonic()
        if now - self._shown_at >= self._bar.mininterval:
            self._bar.set_postfix(_postfix(self._pending), refresh=False)
            self._pending = None
            self._shown_at = now


def track(
    iterable: c.Iterable[_T],
    *,
    fabric: t.Any = None,
    epoch: int | None = None,
    desc: str | None = None,
    total: int | None = None,
    stream: t.TextIO | None = None,
    leave: bool = True,
) -> Tracker[_T]:
    """Iterate ``iterable`` with a progress bar: the helper for Fabric loops.

    ``fabric`` makes only its global rank zero draw; ``epoch`` labels the bar ``Epoch N``;
    ``desc`` replaces that label. The bar is drawn only when ``stream`` (default
    ``sys.stderr``) is a terminal; otherwise iteration is plain. Call
    ``tracker.set_metrics(loss=...)`` inside the loop to show values after the bar.
    """
    if desc is None and epoch is not None:
        desc = f"Epoch {epoch}"
    shown_on = stream if stream is not None else sys.stderr
    return Tracker(
        iterable,
        desc=desc,
        total=total,
        stream=stream,
        leave=leave,
        enabled=_enabled(shown_on, fabric),
    )
