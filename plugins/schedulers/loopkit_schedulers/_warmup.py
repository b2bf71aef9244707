"""Linear warm-up before any scheduler, built from torch's ``LinearLR`` and ``SequentialLR``."""

from __future__ import annotations

import typing as t

import torch
from torch.optim.lr_scheduler import LinearLR, LRScheduler, ReduceLROnPlateau, SequentialLR

__all__ = ["linear_warmup"]


def linear_warmup(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    then: LRScheduler | None = None,
    *,
    start_factor: float | None = None,
) -> LRScheduler:
    """Warm the learning rate up linearly over ``warmup_steps`` steps, then run ``then``.

    Step ``k`` (0-based) of the warm-up uses ``lr * (k + 1) / warmup_steps``: the formula of
    the reference documents' ``optimizer_step`` recipe, so step ``warmup_steps - 1`` uses the
    full ``lr``. ``start_factor`` replaces the first factor ``1 / warmup_steps`` (the warm-up
    still reaches the full ``lr`` at step ``warmup_steps - 1``). From step ``warmup_steps`` on,
    ``then`` runs from its own start; without it the learning rate stays at ``lr``.

    Return the result as the scheduler of a config with ``"interval": "step"``. It is a
    :class:`~torch.optim.lr_scheduler.LinearLR`, or a
    :class:`~torch.optim.lr_scheduler.SequentialLR` of it and ``then``.
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"linear_warmup(warmup_steps={warmup_steps!r}): pass a positive int")
    factor = 1.0 / warmup_steps if start_factor is None else start_factor
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"linear_warmup(start_factor={start_factor!r}): pass a value in (0, 1]")
    if isinstance(then, ReduceLROnPlateau):
        raise TypeError(
            "linear_warmup(then=ReduceLROnPlateau(...)): torch's SequentialLR cannot run a "
            "plateau scheduler; return the warm-up and the plateau scheduler as two configs "
            "instead (the warm-up with 'interval': 'step')"
        )
    if then is not None and then.optimizer is not optimizer:
        raise ValueError(
            f"linear_warmup(optimizer, then={type(then).__name__}(...)): 'then' drives another "
            "optimizer; create it on the optimizer you warm up"
        )
    warmup = LinearLR(optimizer, start_factor=factor, total_iters=warmup_steps - 1)
    if then is None:
        return warmup
    return t.cast(LRScheduler, SequentialLR(optimizer, [warmup, then], milestones=[warmup_steps]))
