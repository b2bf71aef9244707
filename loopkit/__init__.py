"""loopkit: a minimal, event-emitting PyTorch training-loop kernel.

Importing loopkit is cheap and changes nothing: the public names below are loaded on first
access (PEP 562), so ``import loopkit`` does not even import torch until something needs it.
"""

from __future__ import annotations

import importlib
import typing as t

__version__ = "0.1.0"

_EXPORTS = {
    "Fabric": "loopkit.fabric",
    "Phase": "loopkit.fabric",
    "Bus": "loopkit.events",
    "HookError": "loopkit.events",
    "HOOKS": "loopkit.hooks",
    "Plugin": "loopkit.plugins",
    "registry": "loopkit.plugins",
    "Precision": "loopkit.precision",
    "Strategy": "loopkit.strategy",
    "SingleDeviceStrategy": "loopkit.strategy",
    "Accelerator": "loopkit.accelerator",
    "CheckpointError": "loopkit.checkpoint",
    "set_debug": "loopkit._log",
    "LoopModule": "loopkit.module",
    "Trainer": "loopkit.trainer",
    "Callback": "loopkit.callbacks",
    "ModelCheckpoint": "loopkit.callbacks",
}

__all__ = [*sorted(_EXPORTS), "__version__"]

if t.TYPE_CHECKING:
    # `X as X`: an explicit re-export (what mypy --strict and ruff want of a package's names).
    from loopkit._log import set_debug as set_debug
    from loopkit.accelerator import Accelerator as Accelerator
    from loopkit.callbacks import Callback as Callback
    from loopkit.callbacks import ModelCheckpoint as ModelCheckpoint
    from loopkit.checkpoint import CheckpointError as CheckpointError
    from loopkit.events import Bus as Bus
    from loopkit.events import HookError as HookError
    from loopkit.fabric import Fabric as Fabric
    from loopkit.fabric import Phase as Phase
    from loopkit.hooks import HOOKS as HOOKS
    from loopkit.module import LoopModule as LoopModule
    from loopkit.plugins import Plugin as Plugin
    from loopkit.plugins import registry as registry
    from loopkit.precision import Precision as Precision
    from loopkit.strategy import SingleDeviceStrategy as SingleDeviceStrategy
    from loopkit.strategy import Strategy as Strategy
    from loopkit.trainer import Trainer as Trainer


def __getattr__(name: str) -> t.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loopkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
