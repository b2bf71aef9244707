"""Learning-rate scheduling for loopkit.

* :class:`Schedulers` (plugin ``"schedulers"``): steps the schedulers ``configure_optimizers``
  returned (the Trainer creates it by name), or a Fabric loop's own, at their ``interval`` and
  ``frequency``, with the ``monitor`` metric for ``ReduceLROnPlateau``; its state goes into
  checkpoints.
* :class:`LearningRateMonitor` (plugin ``"lr_monitor"``): logs each parameter group's
  learning rate whenever a scheduler steps.
* :func:`linear_warmup`: linear warm-up before any scheduler, from torch's own schedulers.

The whole story: ``docs/schedulers.md``. This package never imports another plugin.
"""

from __future__ import annotations

from loopkit_schedulers._monitor import LearningRateMonitor, learning_rates
from loopkit_schedulers._stepping import STEP_HOOK, MissingMonitorError, Schedulers
from loopkit_schedulers._warmup import linear_warmup

__all__ = [
    "STEP_HOOK",
    "LearningRateMonitor",
    "MissingMonitorError",
    "Schedulers",
    "learning_rates",
    "linear_warmup",
]

__version__ = "0.1.0"
