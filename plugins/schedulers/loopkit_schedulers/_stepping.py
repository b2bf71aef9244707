"""Step learning-rate schedulers from the kernel's hooks, by interval, frequency and monitor.

:class:`Schedulers` consumes :class:`loopkit.optim.LRSchedulerConfig` objects (the Trainer's,
parsed from ``configure_optimizers``, or a Fabric loop's own) and steps each scheduler when the
loop says a batch or an epoch is over. It changes learning rates only by calling the scheduler's
own ``step`` (or the module's ``lr_scheduler_step`` override), never steps an optimizer, and never
imports another plugin.
"""

from __future__ import annotations

import collections.abc as c
import typing as t
import warnings

import torch

from loopkit.optim import SCHEDULER_KEYS, LRSchedulerConfig
from loopkit.plugins import Plugin
from loopkit.wrappers import unwrap

if t.TYPE_CHECKING:
    from loopkit.events import Subscription
    from loopkit.fabric import Fabric

__all__ = ["STEP_HOOK", "MissingMonitorError", "Schedulers"]

#: The custom hook fired after schedulers stepped, with ``schedulers`` ({name: config}, the ones
#: that stepped), ``step`` (optimizer steps so far), ``interval``, ``fabric`` and ``trainer``.
STEP_HOOK = "on_lr_scheduler_step"

# Priorities, chosen against the Trainer's own receivers (it reduces epoch metrics at 10_000 and
# writes logs at -10_000). A plateau step left pending by the last batch is taken before the
# epoch's metrics are reduced; scheduled steps come after callbacks and the module (priority 0)
# have run, so a metric they log at that moment is visible to a monitor.
_FLUSH_FIRST = 20_000
_AFTER_USERS = -100


class MissingMonitorError(LookupError):
    """A monitored scheduler's ``monitor`` metric was never logged (and ``strict`` is True)."""


class Schedulers(Plugin):
    """Step every configured learning-rate scheduler at its ``interval`` and ``frequency``.

    ``configs=None`` (what the Trainer creates): the schedulers of the Trainer that fires
    ``on_fit_start``, read from ``trainer.lr_scheduler_configs``; nothing is stepped when the
    module uses manual optimization. ``configs=[...]`` (a Fabric loop): the schedulers given,
    each a scheduler, a config dict with the keys ``configure_optimizers`` accepts
    (``scheduler``, ``interval``, ``frequency``, ``monitor``, ``strict``, ``name``,
    ``reduce_on_plateau``), or an :class:`~loopkit.optim.LRSchedulerConfig`.

    When each steps:

    * ``interval="step"``: in ``on_train_batch_end`` of every batch in which its optimizer
      stepped (``on_optimizer_step`` fired for it), when the number of such batches is a
      multiple of ``frequency``;
    * ``interval="epoch"``: in ``on_train_epoch_end`` of every ``frequency``-th epoch;
    * a monitored scheduler (``ReduceLROnPlateau``) is stepped with the ``monitor`` metric's
      latest value; with ``interval="step"`` it steps once the batch's work is over: after the
      validation run that follows the batch (``on_validation_end``) when there is one, else at
      the next ``on_train_batch_start``/``on_train_batch_end``/``on_train_epoch_end``/
      ``on_train_end``.
    """

    kind = "subscriber"
    plugin_name = "schedulers"

    def __init__(self, configs: t.Any = None) -> None:
        self._own = configs is not None
        self._configs: list[LRSchedulerConfig] = []
        self._names: list[str] = []
        self._optimizers: list[t.Any] = []  # each config's optimizer, the user's object
        self._source: object = None  # the trainer's config list bound last
        self._active = self._own
        self._host: Fabric | None = None
        self._module: t.Any = None
        self._opt_steps: list[int] = []
        self._epochs = 0
        self._stepped_batches = 0
        self._pending: list[int] = []
        self._stepped_now: set[int] = set()
        self._metrics: dict[str, float] = {}
        self._restore: dict[str, t.Any] | None = None
        self._flush_subscriptions: list[Subscription] = []
        if configs is not None:
            items = [configs] if _is_single(configs) else list(configs)
            self._bind([_as_config(item, i) for i, item in enumerate(items)])

    def __repr__(self) -> str:
        source = "own configs" if self._own else "the trainer's configs"
        return f"Schedulers({source}: {', '.join(self._names) or 'none bound'})"

    # -- what users and other plugins read --------------------------------------------------

    @property
    def configs(self) -> list[LRSchedulerConfig]:
        """The scheduler configs being stepped, in order."""
        return list(self._configs)

    @property
    def names(self) -> list[str]:
        """Each config's name in logs: its ``name``, else ``lr-<Optimizer>`` (``-1``... when
        several schedulers drive optimizers of one class)."""
        return list(self._names)

    @property
    def named_configs(self) -> dict[str, LRSchedulerConfig]:
        """``{name: config}`` for every config, in order."""
        return dict(zip(self._names, self._configs))

    @property
    def active(self) -> bool:
        """Whether this plugin steps its schedulers (False in manual optimization)."""
        return self._active and bool(self._configs)

    @property
    def stepped_batches(self) -> int:
        """Batches in which at least one optimizer stepped (the Trainer's ``global_step``)."""
        return self._stepped_batches

    @property
    def epochs(self) -> int:
        """Training epochs that ended (``on_train_epoch_end`` fired)."""
        return self._epochs

    @property
    def optimizer_steps(self) -> list[int]:
        """Per config: the batches in which its optimizer stepped (what ``frequency`` counts)."""
        return list(self._opt_steps)

    @property
    def metrics(self) -> dict[str, float]:
        """The metrics a Fabric loop passed to the hooks (``metrics=``), latest value each."""
        return dict(self._metrics)

    # -- attaching and binding --------------------------------------------------------------

    def attach(self, host: Fabric) -> None:
        self._host = host
        bus = host.bus
        bus.connect(self._batch_end, "on_train_batch_end", priority=_AFTER_USERS)
        bus.connect(self._validation_end, "on_validation_end", priority=_AFTER_USERS)
        bus.connect(self._epoch_end, "on_train_epoch_end", priority=_AFTER_USERS)
        self._connect_flush()

    def _connect_flush(self) -> None:
        """Listen where a pending monitored step is taken, only while a config can leave one
        (a hook nobody listens to costs the loop nothing)."""
        for subscription in self._flush_subscriptions:
            subscription.remove()
        self._flush_subscriptions = []
        host = self._host
        if host is None or not any(
            c.reduce_on_plateau and c.interval == "step" for c in self._configs
        ):
            return
        bus = host.bus
        self._flush_subscriptions = [
            bus.connect(self._flush_receiver, "on_train_batch_start"),
            bus.connect(self._flush_receiver, "on_train_epoch_end", priority=_FLUSH_FIRST),
            bus.connect(self._flush_receiver, "on_train_end"),
        ]

    def on_fit_start(self, trainer: t.Any = None, module: t.Any = None) -> None:
        """A Trainer starts fitting: bind its scheduler configs (unless this plugin has its own)."""
        if self._own or trainer is None:
            return
        self._module = module
        host = self._host
        if host is not None:
            first = next(
                (p for p in host.plugins if isinstance(p, Schedulers) and not p._own), self
            )
            if first is not self:
                # Another instance (named in plugins=) already steps the trainer's schedulers.
                self._active = False
                return
        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        if configs is not self._source:
            self._source = configs
            self._bind(list(configs), getattr(trainer, "optimizers", None))
        self._active = bool(getattr(module, "automatic_optimization", True))

    def _bind(
        self, configs: list[LRSchedulerConfig], trainer_optimizers: t.Any = None
    ) -> None:
        optimizers = []
        for config in configs:
            opt = config.scheduler.optimizer
            idx = config.opt_idx
            if trainer_optimizers and idx is not None and 0 <= idx < len(trainer_optimizers):
                opt = trainer_optimizers[idx]
            optimizers.append(unwrap(opt))
        self._names = _names(configs)
        self._configs = configs
        self._optimizers = optimizers
        self._opt_steps = [0] * len(configs)
        self._epochs = 0
        self._stepped_batches = 0
        self._pending = []
        self._stepped_now = set()
        self._connect_flush()
        if self._restore is not None:
            state, self._restore = self._restore, None
            self._apply(state)

    # -- the hooks ----------------------------------------------------------------------------

    def on_optimizer_step(self, optimizer: t.Any = None) -> None:
        """Fabric fires this after every ``optimizer.step()``: note which optimizer stepped."""
        if self._active and optimizer is not None:
            self._stepped_now.add(id(unwrap(optimizer)))

    def _flush_receiver(self, trainer: t.Any = None) -> None:
        if self._pending:
            self._flush(trainer)

    def _batch_end(self, trainer: t.Any = None, metrics: t.Any = None) -> None:
        if not self._active:
            return
        if self._pending:  # a loop that fires no on_train_batch_start
            self._flush(trainer)
        if metrics:
            self._update_metrics(metrics, "on_train_batch_end")
        stepped = self._stepped_now
        if not stepped:
            return
        self._stepped_now = set()
        self._stepped_batches += 1
        due: list[int] = []
        for i, opt in enumerate(self._optimizers):
            if id(opt) not in stepped:
                continue
            self._opt_steps[i] += 1
            config = self._configs[i]
            if config.interval == "step" and self._opt_steps[i] % config.frequency == 0:
                (self._pending if config.reduce_on_plateau else due).append(i)
        if due:
            self._step(due, trainer, "step")

    def _validation_end(self, trainer: t.Any = None, metrics: t.Any = None) -> None:
        if metrics:
            self._update_metrics(metrics, "on_validation_end")
        if self._pending and self._active:
            self._flush(trainer)

    def _epoch_end(self, trainer: t.Any = None, metrics: t.Any = None) -> None:
        if not self._active:
            return
        if metrics:
            self._update_metrics(metrics, "on_train_epoch_end")
        if self._pending:
            self._flush(trainer)
        self._epochs += 1
        due = [
            i
            for i, config in enumerate(self._configs)
            if config.interval == "epoch" and self._epochs % config.frequency == 0
        ]
        if due:
            self._step(due, trainer, "epoch")

    def _flush(self, trainer: t.Any) -> None:
        due, self._pending = self._pending, []
        self._step(due, trainer, "step")

    # -- stepping -----------------------------------------------------------------------------

    def global_step(self, trainer: t.Any = None) -> int:
        """The step the learning rates apply from: the trainer's ``global_step``, else
        :attr:`stepped_batches`."""
        step = getattr(trainer, "global_step", None)
        return int(step) if step is not None else self._stepped_batches

    def _step(self, indices: list[int], trainer: t.Any, interval: str) -> None:
        module = self._module if trainer is not None else None
        override = getattr(module, "lr_scheduler_step", None) if module is not None else None
        stepped: dict[str, LRSchedulerConfig] = {}
        for i in indices:
            config, name = self._configs[i], self._names[i]
            metric: float | None = None
            if config.reduce_on_plateau:
                metric = self._monitored(config, name, trainer)
                if metric is None:
                    continue
            if callable(override):
                override(config.scheduler, metric)
            elif metric is None:
                config.scheduler.step()
            else:
                config.scheduler.step(metric)
            stepped[name] = config
        host = self._host
        if stepped and host is not None:
            host.call(
                STEP_HOOK,
                fabric=host,
                trainer=trainer,
                schedulers=stepped,
                step=self.global_step(trainer),
                interval=interval,
            )

    def _monitored(self, config: LRSchedulerConfig, name: str, trainer: t.Any) -> float | None:
        """The value of ``config.monitor`` now; None (after a warning) when missing, not strict."""
        monitor = config.monitor if config.monitor is not None else "val_loss"
        # A Trainer's callback_metrics; a Fabric loop's metrics= (a bespoke trainer may have
        # no callback_metrics and pass metrics= as a Fabric loop does).
        logged = getattr(trainer, "callback_metrics", None)
        source: c.Mapping[str, t.Any] = self._metrics if logged is None else logged
        if monitor in source:
            value = source[monitor]
            return float(value.item() if isinstance(value, torch.Tensor) else value)
        names = ", ".join(repr(k) for k in sorted(source)) or "none"
        problem = (
            f"scheduler {name!r} ({type(config.scheduler).__name__}) monitors {monitor!r}, which "
            f"was never logged; the metrics logged are: {names}"
        )
        if config.strict:
            where = (
                f"log it with self.log({monitor!r}, value)"
                if logged is not None
                else f"pass it to a hook: fabric.call('on_validation_end', "
                f"metrics={{{monitor!r}: value}})"
            )
            raise MissingMonitorError(
                f"{problem}. To fix it, {where}, set 'monitor' to one of the logged names, or "
                "set 'strict': False in the scheduler config to skip the step with a warning"
            )
        warnings.warn(
            f"{problem}. The scheduler did not step ('strict': False)", UserWarning, stacklevel=2
        )
        return None

    def _update_metrics(self, metrics: t.Any, hook: str) -> None:
        if not isinstance(metrics, c.Mapping):
            raise TypeError(
                f"{hook}(metrics=...) got a {type(metrics).__name__}; pass a dict of metric "
                "name -> number, e.g. metrics={'val_loss': loss}"
            )
        for key, value in metrics.items():
            try:
                self._metrics[str(key)] = float(
                    value.item() if isinstance(value, torch.Tensor) else value
                )
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(
                    f"{hook}(metrics=...): {key!r} is a {type(value).__name__}, not a number or a "
                    "one-element tensor"
                ) from err

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, t.Any]:
        """Every scheduler's ``state_dict()`` and the counters ``frequency`` is measured by."""
        if not self._configs and self._restore is not None:
            return dict(self._restore)
        return {
            "names": list(self._names),
            "schedulers": [_state_of(config.scheduler) for config in self._configs],
            "optimizer_steps": list(self._opt_steps),
            "epochs": self._epochs,
            "stepped_batches": self._stepped_batches,
            "pending": list(self._pending),
            "metrics": dict(self._metrics),
        }

    def load_state_dict(self, state: c.Mapping[str, t.Any]) -> None:
        """Restore :meth:`state_dict`'s output. Before a Trainer's schedulers are bound, the
        state is kept and applied when they are (at ``on_fit_start``)."""
        if "schedulers" not in state:
            raise KeyError(
                f"not a Schedulers state: it has no 'schedulers' entry (keys: "
                f"{', '.join(map(repr, state)) or 'none'})"
            )
        if not self._configs and not self._own:
            self._restore = dict(state)
            return
        self._apply(state)

    def _apply(self, state: c.Mapping[str, t.Any]) -> None:
        states = list(state["schedulers"])
        if len(states) != len(self._configs):
            saved = ", ".join(map(str, state.get("names", []))) or "unnamed"
            raise ValueError(
                f"the checkpoint holds the state of {len(states)} scheduler(s) ({saved}), but "
                f"this run has {len(self._configs)} ({', '.join(self._names) or 'none'}); restore "
                "into a run configured with the same schedulers, in the same order"
            )
        for config, saved_state in zip(self._configs, states):
            if saved_state is not None:
                config.scheduler.load_state_dict(saved_state)
        n = len(self._configs)
        self._opt_steps = [int(s) for s in state.get("optimizer_steps", [0] * n)]
        self._epochs = int(state.get("epochs", 0))
        self._stepped_batches = int(state.get("stepped_batches", 0))
        self._pending = [int(i) for i in state.get("pending", [])]
        self._metrics = {str(k): float(v) for k, v in dict(state.get("metrics", {})).items()}


# -- helpers ----------------------------------------------------------------------------------


def _is_scheduler(obj: object) -> bool:
    sched = torch.optim.lr_scheduler
    if isinstance(obj, (sched.LRScheduler, sched.ReduceLROnPlateau)):
        return True
    return callable(getattr(obj, "step", None)) and hasattr(obj, "optimizer")


def _is_single(configs: object) -> bool:
    return isinstance(configs, (c.Mapping, LRSchedulerConfig)) or _is_scheduler(configs)


def _as_config(item: t.Any, position: int) -> LRSchedulerConfig:
    """One entry of ``Schedulers(configs=[...])`` as a checked config."""
    where = f"Schedulers(configs=[...]) item {position}"
    if isinstance(item, LRSchedulerConfig):
        config = LRSchedulerConfig(**{k: getattr(item, k) for k in SCHEDULER_KEYS})
    elif isinstance(item, c.Mapping):
        unknown = sorted(set(item) - set(SCHEDULER_KEYS))
        if unknown:
            raise ValueError(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; accepted keys are "
                f"{', '.join(map(repr, SCHEDULER_KEYS))}"
            )
        if "scheduler" not in item:
            raise ValueError(f"{where} is a dict without a 'scheduler' key")
        config = LRSchedulerConfig(**item)
    elif _is_scheduler(item):
        config = LRSchedulerConfig(scheduler=item)
    else:
        raise TypeError(
            f"{where} is a {type(item).__name__}; pass a learning-rate scheduler, a dict "
            "{'scheduler': ..., 'interval': 'step', ...} or a loopkit.optim.LRSchedulerConfig"
        )
    if not _is_scheduler(config.scheduler):
        raise TypeError(
            f"{where}: 'scheduler' holds a {type(config.scheduler).__name__}, not a learning-rate "
            "scheduler (an object with step() and an optimizer attribute)"
        )
    if config.interval not in ("epoch", "step"):
        raise ValueError(f"{where}: interval={config.interval!r}; use 'epoch' or 'step'")
    frequency = config.frequency
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"{where}: frequency={frequency!r}; use a positive int")
    if not isinstance(config.strict, bool):
        raise ValueError(f"{where}: strict={config.strict!r}; use True or False")
    if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config.reduce_on_plateau = True
    if config.reduce_on_plateau and config.monitor is None:
        config.monitor = "val_loss"  # as configure_optimizers: "Default: val_loss"
    return config


def _names(configs: list[LRSchedulerConfig]) -> list[str]:
    """Log names: each config's ``name``, else ``lr-<Optimizer>`` made unique with ``-1``..."""
    given = [config.name for config in configs if config.name is not None]
    for name in given:
        if not isinstance(name, str) or not name:
            raise ValueError(f"scheduler config name={name!r}; use a non-empty string")
        if given.count(name) > 1:
            raise ValueError(
                f"two scheduler configs are named {name!r}; give each a distinct 'name' (it is "
                "the key their learning rates are logged under)"
            )
    names: list[str] = []
    for config in configs:
        if config.name is not None:
            names.append(config.name)
            continue
        base = f"lr-{type(unwrap(config.scheduler.optimizer)).__name__}"
        name, n = base, 1
        while name in names or name in given:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _state_of(scheduler: t.Any) -> t.Any:
    state_dict = getattr(scheduler, "state_dict", None)
    return state_dict() if callable(state_dict) else None
