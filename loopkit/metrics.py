"""The bookkeeping of ``self.log``: step values, epoch aggregates, and where they are written.

``LoopModule.log`` records into :class:`_Metrics`; bus receivers the Trainer connects reduce
the epoch aggregates (weighted mean, sum, max, min, or a function) at the end of the training
epoch and of each validation run, write them to the Fabric's loggers every
``log_every_n_steps``, and keep the latest values for callbacks and the progress bar.

It must never touch the optimization (no gradients, no steps), hold a logged tensor's graph
(values are detached), or cost anything per batch in a run that logs nothing per step.
"""

from __future__ import annotations

import typing as t
import warnings

import torch

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric
    from loopkit.trainer import Trainer

#: Receivers the trainer itself subscribes run first (setting up) or last (collecting).
_FIRST, _LAST = 10_000, -10_000


_REDUCE_NAMES: dict[t.Any, str] = {
    "mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min",
    torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
    max: "max", min: "min", sum: "sum",
}  # fmt: skip


class _Aggregate:
    """Reduces one metric's values over an epoch (mean weighted by batch size, sum, max, min)."""

    __slots__ = ("fx", "total", "weight", "values", "prog_bar", "logger", "sync", "forked")

    def __init__(self, fx: t.Any, prog_bar: bool, logger: bool, sync: bool, forked: bool) -> None:
        self.fx = fx
        self.total: torch.Tensor | None = None
        self.weight = 0.0
        self.values: list[torch.Tensor] = []
        self.prog_bar, self.logger, self.sync, self.forked = prog_bar, logger, sync, forked

    def update(self, value: torch.Tensor, batch_size: int | None) -> None:
        fx = self.fx
        if fx == "mean":
            w = 1.0 if batch_size is None else float(batch_size)
            v = value.double() * w
            self.total = v if self.total is None else self.total + v
            self.weight += w
        elif fx == "sum":
            self.total = value if self.total is None else self.total + value
        elif fx == "max":
            self.total = value if self.total is None else torch.maximum(self.total, value)
        elif fx == "min":
            self.total = value if self.total is None else torch.minimum(self.total, value)
        else:
            self.values.append(value)

    def compute(self, fabric: Fabric) -> torch.Tensor:
        fx, sync = self.fx, self.sync and fabric.world_size > 1
        if fx == "mean":
            assert self.total is not None
            total, weight = self.total, torch.tensor(self.weight, dtype=torch.float64)
            if sync:
                total = fabric.all_reduce(total, reduce_op="sum")
                weight = fabric.all_reduce(weight.to(total.device), reduce_op="sum")
            return (total / weight.to(total.device)).float()
        if fx in ("sum", "max", "min"):
            assert self.total is not None
            op: t.Any = fx
            return fabric.all_reduce(self.total, reduce_op=op) if sync else self.total
        stacked = torch.stack(self.values)
        if sync:
            stacked = fabric.all_gather(stacked).flatten()
        return torch.as_tensor(fx(stacked))


class _Metrics:
    """What ``self.log`` recorded: step values, epoch aggregates, and where they go.

    Step values (``on_step``) are written to the loggers every ``log_every_n_steps`` counted
    batches; epoch aggregates (``on_epoch``) are reduced and written at the end of the training
    epoch and of each validation run. ``callback`` holds the latest value of everything.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.callback: dict[str, torch.Tensor] = {}
        self.logged: dict[str, t.Any] = {}
        self.pbar: dict[str, torch.Tensor] = {}
        self.step_values: dict[str, torch.Tensor] = {}
        self.train_aggs: dict[str, _Aggregate] = {}
        self.val_aggs: dict[str, _Aggregate] = {}
        self.defaults = (True, False)  # (on_step, on_epoch) where the module logs now
        self.epoch_end = False  # the running phase's epoch reductions are done
        self.collect: dict[str, torch.Tensor] | None = None  # validate() gathers its results
        self._saved: tuple[tuple[bool, bool], bool] = (self.defaults, self.epoch_end)

    def reset_run(self) -> None:
        self.step_values = {}
        self.defaults = (True, False)
        self.epoch_end = False

    def connect(self, bus: t.Any) -> None:
        # on_train_batch_end's writer is connected on the first step value logged, so a run
        # that logs nothing per step pays nothing per batch for it.
        self.bus = bus
        self.batch_end_connected = False
        bus.connect(self._train_epoch_start, "on_train_epoch_start", priority=_FIRST)
        bus.connect(self._train_epoch_reduce, "on_train_epoch_end", priority=_FIRST)
        bus.connect(self._train_epoch_write, "on_train_epoch_end", priority=_LAST)
        bus.connect(self._val_start, "on_validation_start", priority=_FIRST)
        bus.connect(self._val_batch_end, "on_validation_batch_end", priority=_LAST)
        bus.connect(self._val_epoch_end, "on_validation_epoch_end", priority=_LAST)
        bus.connect(self._val_end, "on_validation_end", priority=_LAST)

    # -- recording (called by LoopModule.log) --------------------------------------------------

    def log(
        self,
        name: str,
        value: t.Any,
        prog_bar: bool,
        logger: bool,
        on_step: bool | None,
        on_epoch: bool | None,
        reduce_fx: t.Any,
        sync_dist: bool,
        batch_size: int | None,
    ) -> None:
        if on_step is None:
            on_step = self.defaults[0]
        if on_epoch is None:
            on_epoch = self.defaults[1]
        value = _scalar(name, value)
        fx = _REDUCE_NAMES.get(reduce_fx, reduce_fx)
        if on_step:
            if sync_dist and self.trainer.fabric.world_size > 1:
                op: t.Any = fx if fx in ("sum", "max", "min") else "mean"
                value = self.trainer.fabric.all_reduce(value, reduce_op=op)
            key = f"{name}_step" if on_epoch else name
            if logger:
                self.step_values[key] = value
                if not self.batch_end_connected:
                    self.batch_end_connected = True
                    self.bus.connect(self._train_batch_end, "on_train_batch_end", priority=_LAST)
                    self._check_interval(name)
            self.callback[key] = value
            if on_epoch:
                self.callback[name] = value
            if prog_bar:
                self.pbar[key] = value
        if on_epoch:
            aggs = self.val_aggs if self.trainer.validating else self.train_aggs
            agg = aggs.get(name)
            if agg is None:
                if not isinstance(fx, str) and not callable(fx):
                    raise ValueError(
                        f"self.log({name!r}, reduce_fx={reduce_fx!r}): use 'mean', 'sum', "
                        "'max', 'min' or a function of a 1-d tensor"
                    )
                if isinstance(fx, str) and fx not in ("mean", "sum", "max", "min"):
                    raise ValueError(
                        f"self.log({name!r}, reduce_fx={reduce_fx!r}): use 'mean', 'sum', "
                        "'max', 'min' or a function of a 1-d tensor"
                    )
                agg = aggs[name] = _Aggregate(fx, prog_bar, logger, sync_dist, on_step)
            agg.update(value, batch_size)
            if self.epoch_end:
                # Logged after the reductions (an epoch-end hook): visible to monitors now.
                self.callback[f"{name}_epoch" if on_step else name] = value

    # -- the bus receivers -----------------------------------------------------------------

    def _log_step(self) -> int:
        p = self.trainer.progress
        automatic = self.trainer._module is not None and self.trainer._module.automatic_optimization
        return p.global_step if automatic else p.total_batches

    def _write(self, metrics: dict[str, torch.Tensor]) -> None:
        if not metrics:
            return
        self.logged.update(metrics)
        if self.collect is not None:
            self.collect.update(metrics)
        trainer = self.trainer
        if trainer.loggers:
            plain: dict[str, float] = {k: float(v.item()) for k, v in metrics.items()}
            plain.setdefault("epoch", trainer.current_epoch)
            step = max(self._log_step() - 1, 0)
            trainer.fabric.log_dict(plain, step=step)

    def _train_epoch_start(self) -> None:
        self.train_aggs = {}
        self.defaults, self.epoch_end = (True, False), False

    def _check_interval(self, name: str) -> None:
        """Warn (once, on the first value logged on step) when an epoch has fewer batches than
        ``log_every_n_steps``: such values would reach the loggers rarely or never."""
        trainer = self.trainer
        batches, every = trainer.num_training_batches, trainer.log_every_n_steps
        if trainer.loggers and batches < every and trainer.is_global_zero:
            warnings.warn(
                f"self.log({name!r}) is written every log_every_n_steps={every} steps, but an "
                f"epoch has {batches:g} training batches, so the loggers may see it rarely or "
                "never; pass Trainer(log_every_n_steps=N) with a smaller N",
                UserWarning,
                stacklevel=4,
            )

    def _train_batch_end(self) -> None:
        values = self.step_values
        if not values:
            return
        self.step_values = {}
        trainer = self.trainer
        counted = trainer.progress.stepped or not trainer.lightning_module.automatic_optimization
        if (counted and self._log_step() % trainer.log_every_n_steps == 0) or trainer.should_stop:
            self._write(values)

    def _reduce(self, aggs: dict[str, _Aggregate]) -> dict[str, torch.Tensor]:
        fabric = self.trainer.fabric
        written: dict[str, torch.Tensor] = {}
        for name, agg in aggs.items():
            value = agg.compute(fabric)
            key = f"{name}_epoch" if agg.forked else name
            self.callback[key] = value
            if agg.forked:
                self.callback[name] = value
            if agg.prog_bar:
                self.pbar[key] = value
            if agg.logger:
                written[key] = value
        return written

    def _train_epoch_reduce(self) -> None:
        self._reduce(self.train_aggs)
        self.defaults, self.epoch_end = (False, True), True

    def _train_epoch_write(self) -> None:
        # Again: epoch-end hooks may have logged more (on_train_epoch_end's self.log).
        self._write(self._reduce(self.train_aggs))
        self.train_aggs = {}
        self.defaults, self.epoch_end = (True, False), False
        for lg in self.trainer.loggers:
            if callable(getattr(lg, "save", None)):
                lg.save()

    def _val_start(self) -> None:
        self.val_aggs = {}
        self._saved = (self.defaults, self.epoch_end)
        self.defaults, self.epoch_end = (False, True), False

    def _val_batch_end(self) -> None:
        if self.step_values:
            values, self.step_values = self.step_values, {}
            self._write(values)

    def _val_epoch_end(self) -> None:
        self._write(self._reduce(self.val_aggs))
        self.epoch_end = True

    def _val_end(self) -> None:
        self.val_aggs = {}
        self.defaults, self.epoch_end = self._saved


def _scalar(name: str, value: t.Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"self.log({name!r}, ...) got a tensor of shape {tuple(value.shape)}; log a "
                "scalar (one element), e.g. value.mean()"
            )
        return value.detach().reshape(())
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    raise TypeError(
        f"self.log({name!r}, ...) got a {type(value).__name__}; log a number or a one-element "
        "tensor (use log_dict for a dict)"
    )
