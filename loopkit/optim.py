"""Parse what ``configure_optimizers`` returns into optimizers and scheduler configurations.

This module is pure data handling: it never steps an optimizer or a scheduler (stepping schedulers
is the LR scheduling plugin's job) and never imports a plugin. Every return form the reference
documents show is accepted:

* one optimizer;
* a list or tuple of optimizers;
* ``(optimizers, schedulers)``, where ``schedulers`` is one scheduler, one config dict, or a list
  of schedulers and config dicts;
* a dict with ``optimizer`` and optionally ``lr_scheduler`` (a scheduler or a config dict) and
  ``monitor``; or a list/tuple of such dicts;
* ``None``: nothing is trained (with a warning).

Anything else is an error that names what was returned and lists what is accepted.
"""

from __future__ import annotations

import collections.abc as c
import typing as t
import warnings
from dataclasses import dataclass

import torch

__all__ = [
    "ACCEPTED_FORMS",
    "LRSchedulerConfig",
    "OptimizerConfigError",
    "SCHEDULER_KEYS",
    "parse_configure_optimizers",
]

#: The keys a scheduler config dict may hold.
SCHEDULER_KEYS = (
    "scheduler", "interval", "frequency", "monitor", "strict", "name", "reduce_on_plateau",
    "opt_idx",
)  # fmt: skip
_DICT_KEYS = ("optimizer", "lr_scheduler", "monitor", "frequency")

ACCEPTED_FORMS = """\
configure_optimizers() may return:
  - one optimizer: Adam(...)
  - a list or tuple of optimizers: [Adam(...), SGD(...)]
  - (optimizers, schedulers): [Adam(...)], [StepLR(...)]; schedulers may be one scheduler, one
    config dict {"scheduler": ..., "interval": "step"}, or a list of schedulers and config dicts
  - a dict: {"optimizer": Adam(...), "lr_scheduler": StepLR(...) or {...}, "monitor": "val_loss"}
  - a list or tuple of such dicts
  - None, to train nothing"""


class OptimizerConfigError(ValueError):
    """``configure_optimizers`` returned something loopkit cannot interpret."""


@dataclass
class LRSchedulerConfig:
    """One learning-rate scheduler and when to step it (the LR scheduling plugin reads this).

    ``interval`` is ``"epoch"`` or ``"step"``; the scheduler steps every ``frequency`` of those.
    ``monitor`` names the metric a ``ReduceLROnPlateau`` scheduler reads from
    ``trainer.callback_metrics``; with ``strict`` a missing metric is an error, otherwise a
    warning. ``opt_idx`` is the index of the optimizer the scheduler drives.
    """

    scheduler: t.Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None
    reduce_on_plateau: bool = False
    opt_idx: int | None = None


def _is_optimizer(obj: object) -> bool:
    if isinstance(obj, torch.optim.Optimizer):
        return True
    # Duck-typed optimizers (and wrapped ones) are accepted when they look like one.
    return all(hasattr(obj, a) for a in ("param_groups", "step", "zero_grad"))


def _is_scheduler(obj: object) -> bool:
    sched = torch.optim.lr_scheduler
    if isinstance(obj, (sched.LRScheduler, sched.ReduceLROnPlateau)):
        return True
    return callable(getattr(obj, "step", None)) and hasattr(obj, "optimizer")


def _is_plateau(obj: object) -> bool:
    return isinstance(obj, torch.optim.lr_scheduler.ReduceLROnPlateau)


def describe(obj: object, depth: int = 0) -> str:
    """A short description of a returned value for error messages: ``[Adam, 'x']``."""
    if isinstance(obj, (list, tuple)) and depth < 2:
        inner = ", ".join(describe(o, depth + 1) for o in obj[:6])
        more = ", ..." if len(obj) > 6 else ""
        return f"[{inner}{more}]" if isinstance(obj, list) else f"({inner}{more})"
    if isinstance(obj, dict) and depth < 2:
        inner = ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(obj.items())[:6])
        return "{" + inner + "}"
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return repr(obj)
    return type(obj).__name__


def _error(returned: object, problem: str) -> OptimizerConfigError:
    return OptimizerConfigError(
        f"configure_optimizers() returned {describe(returned)}: {problem}.\n{ACCEPTED_FORMS}"
    )


def parse_configure_optimizers(
    returned: object,
) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Split ``configure_optimizers()``'s return value into optimizers and scheduler configs.

    Raises :class:`OptimizerConfigError` naming what was returned and what is accepted.
    """
    optimizers: list[t.Any]
    raw_schedulers: list[t.Any] = []
    monitors: dict[int, str] = {}  # scheduler position -> monitor given beside it in a dict
    if returned is None:
        warnings.warn(
            "configure_optimizers() returned None: the trainer will run training_step but "
            "step no optimizer",
            UserWarning,
            stacklevel=3,
        )
        return [], []
    if _is_optimizer(returned):
        return [t.cast(torch.optim.Optimizer, returned)], []
    if isinstance(returned, dict):
        optimizers, raw_schedulers, monitors = _parse_dicts([returned], returned)
    elif isinstance(returned, (list, tuple)):
        items = list(returned)
        if not items:
            warnings.warn(
                f"configure_optimizers() returned an empty {type(returned).__name__}: the "
                "trainer will run training_step but step no optimizer",
                UserWarning,
                stacklevel=3,
            )
            return [], []
        if all(_is_optimizer(o) for o in items):
            optimizers = items
        elif all(isinstance(o, dict) for o in items):
            optimizers, raw_schedulers, monitors = _parse_dicts(items, returned)
        elif len(items) == 2 and isinstance(items[0], (list, tuple)):
            first, second = items
            optimizers = list(first)
            bad = [o for o in optimizers if not _is_optimizer(o)]
            if bad or not optimizers:
                raise _error(
                    returned,
                    f"the first element of (optimizers, schedulers) must hold optimizers, "
                    f"it holds {describe(bad[0]) if bad else 'nothing'}",
                )
            raw_schedulers = list(second) if isinstance(second, (list, tuple)) else [second]
        else:
            odd = next(o for o in items if not _is_optimizer(o))
            hint = (
                "; return optimizers and schedulers as two lists: ([optimizer], [scheduler])"
                if _is_scheduler(odd)
                else ""
            )
            raise _error(returned, f"{describe(odd)} is not an optimizer{hint}")
    else:
        raise _error(returned, f"a {type(returned).__name__} is not one of the accepted forms")

    configs = [
        _scheduler_config(s, monitors.get(i), returned) for i, s in enumerate(raw_schedulers)
    ]
    for config in configs:
        config.opt_idx = _owner_index(config, optimizers, returned)
    return optimizers, configs


def _parse_dicts(
    items: c.Sequence[dict[str, t.Any]], returned: object
) -> tuple[list[t.Any], list[t.Any], dict[int, str]]:
    optimizers: list[t.Any] = []
    schedulers: list[t.Any] = []
    monitors: dict[int, str] = {}
    for item in items:
        unknown = sorted(set(item) - set(_DICT_KEYS))
        if unknown:
            raise _error(
                returned,
                f"unknown key(s) {', '.join(map(repr, unknown))} in an optimizer dict; "
                f"accepted keys are {', '.join(map(repr, _DICT_KEYS))}",
            )
        if "optimizer" not in item:
            raise _error(returned, "an optimizer dict has no 'optimizer' key")
        if not _is_optimizer(item["optimizer"]):
            raise _error(
                returned, f"'optimizer' holds {describe(item['optimizer'])}, not an optimizer"
            )
        optimizers.append(item["optimizer"])
        scheduler = item.get("lr_scheduler")
        if scheduler is not None:
            if "monitor" in item:
                monitors[len(schedulers)] = item["monitor"]
            schedulers.append(scheduler)
    return optimizers, schedulers, monitors


def _scheduler_config(item: t.Any, monitor: str | None, returned: object) -> LRSchedulerConfig:
    if isinstance(item, dict):
        unknown = sorted(set(item) - set(SCHEDULER_KEYS))
        if unknown:
            raise _error(
                returned,
                f"unknown key(s) {', '.join(map(repr, unknown))} in a scheduler config; "
                f"accepted keys are {', '.join(map(repr, SCHEDULER_KEYS))}",
            )
        if "scheduler" not in item:
            raise _error(returned, "a scheduler config dict has no 'scheduler' key")
        config = LRSchedulerConfig(**item)
        if monitor is not None and config.monitor is None:
            config.monitor = monitor
    else:
        config = LRSchedulerConfig(scheduler=item, monitor=monitor)
    if not _is_scheduler(config.scheduler):
        raise _error(returned, f"{describe(config.scheduler)} is not a learning-rate scheduler")
    if config.interval not in ("epoch", "step"):
        raise _error(returned, f"scheduler interval={config.interval!r}; use 'epoch' or 'step'")
    if (
        isinstance(config.frequency, bool)
        or not isinstance(config.frequency, int)
        or config.frequency < 1
    ):
        raise _error(returned, f"scheduler frequency={config.frequency!r}; use a positive int")
    if not isinstance(config.strict, bool):
        raise _error(returned, f"scheduler strict={config.strict!r}; use True or False")
    if _is_plateau(config.scheduler):
        config.reduce_on_plateau = True
    if config.reduce_on_plateau and config.monitor is None:
        # The earliest reference document: "'monitor': 'val_recall', # Default: val_loss".
        config.monitor = "val_loss"
    return config


def _owner_index(config: LRSchedulerConfig, optimizers: list[t.Any], returned: object) -> int:
    if config.opt_idx is not None:
        if not isinstance(config.opt_idx, int) or not 0 <= config.opt_idx < len(optimizers):
            raise _error(
                returned,
                f"scheduler opt_idx={config.opt_idx!r} but {len(optimizers)} optimizer(s) were "
                "returned",
            )
        return config.opt_idx
    owner = getattr(config.scheduler, "optimizer", None)
    for i, opt in enumerate(optimizers):
        if owner is opt or owner is getattr(opt, "optimizer", opt):
            return i
    raise _error(
        returned,
        f"{type(config.scheduler).__name__} drives an optimizer that configure_optimizers() did "
        "not return; create the scheduler on one of the returned optimizers",
    )
