"""The learning-rate monitor: log each parameter group's learning rate whenever it is scheduled.

:class:`LearningRateMonitor` listens to the custom hook :data:`~loopkit_schedulers.STEP_HOOK`
that :class:`~loopkit_schedulers.Schedulers` fires after stepping, and to ``on_train_start`` for
the starting values, and writes through ``fabric.log_dict`` to whatever loggers the Fabric (or
the Trainer, whose loggers are its Fabric's) has. It never changes a learning rate.
"""

from __future__ import annotations

import collections.abc as c
import typing as t
import warnings

from loopkit.optim import LRSchedulerConfig
from loopkit.plugins import Plugin
from loopkit_schedulers._stepping import Schedulers

if t.TYPE_CHECKING:
    from loopkit.fabric import Fabric

__all__ = ["LearningRateMonitor", "learning_rates"]


def learning_rates(schedulers: c.Mapping[str, LRSchedulerConfig]) -> dict[str, float]:
    """``{key: lr}`` for every parameter group of each named config's optimizer.

    The key is the config's name when the optimizer has one parameter group, else
    ``<name>/<group>`` where ``<group>`` is the group's ``"name"`` entry or ``pg1``, ``pg2``...
    """
    values: dict[str, float] = {}
    for name, config in schedulers.items():
        groups = config.scheduler.optimizer.param_groups
        if len(groups) == 1:
            values[name] = float(groups[0]["lr"])
            continue
        for i, group in enumerate(groups):
            values[f"{name}/{group.get('name', f'pg{i + 1}')}"] = float(group["lr"])
    return values


class LearningRateMonitor(Plugin):
    """Log the learning rate of every scheduled optimizer, at the start and at every stepping.

    Keys are the scheduler configs' names (:attr:`Schedulers.names`: the ``name`` key, else
    ``lr-<Optimizer>``), with ``/pg1``, ``/pg2``... per parameter group when there are several.
    The step is the number of optimizer steps taken so far, so the value logged at step ``k``
    is the learning rate of the ``k``-th step (0-based).
    """

    kind = "subscriber"
    plugin_name = "lr_monitor"

    def __init__(self) -> None:
        self._host: Fabric | None = None

    def __repr__(self) -> str:
        return "LearningRateMonitor()"

    def attach(self, host: Fabric) -> None:
        self._host = host
        if not host.loggers:
            warnings.warn(
                "the lr_monitor plugin has no logger to write to, so the learning rates go "
                "nowhere: give the Fabric loggers=[...] (the Trainer logger=...)",
                UserWarning,
                stacklevel=2,
            )

    def on_train_start(self, trainer: t.Any = None) -> None:
        """Log the learning rates training starts with (step = optimizer steps so far)."""
        host = self._host
        if host is None:
            return
        for plugin in host.plugins:
            if isinstance(plugin, Schedulers) and plugin.active:
                values = learning_rates(plugin.named_configs)
                if values:
                    host.log_dict(values, step=plugin.global_step(trainer))

    def on_lr_scheduler_step(
        self, fabric: t.Any, schedulers: c.Mapping[str, LRSchedulerConfig], step: int
    ) -> None:
        """After schedulers stepped: log their optimizers' new learning rates at ``step``."""
        values = learning_rates(schedulers)
        if values:
            fabric.log_dict(values, step=step)
