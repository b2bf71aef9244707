"""loopkit-ddp: torch.distributed strategies for loopkit, named ``ddp``, ``ddp_spawn``, ``fsdp``
(and ``ddp_find_unused_parameters_true``).

Users name them (``Fabric(strategy="ddp", devices=2)``); the registry imports the submodule
that defines the one named. Importing this package imports neither torch.distributed nor any
submodule: the names below load on first access.
"""

from __future__ import annotations

import importlib
import typing as t

__version__ = "0.1.0"

_EXPORTS = {
    "DDPStrategy": "loopkit_ddp.ddp",
    "DDPFindUnusedStrategy": "loopkit_ddp.ddp",
    "DDPSpawnStrategy": "loopkit_ddp.ddp",
    "ParallelStrategy": "loopkit_ddp.ddp",
    "FSDPStrategy": "loopkit_ddp.fsdp",
    "mixed_precision_policy": "loopkit_ddp.fsdp",
    "ClusterEnvironment": "loopkit_ddp.environments",
    "LocalEnvironment": "loopkit_ddp.environments",
    "SLURMEnvironment": "loopkit_ddp.environments",
    "TorchElasticEnvironment": "loopkit_ddp.environments",
    "detect_environment": "loopkit_ddp.environments",
}

__all__ = [
    "ClusterEnvironment",
    "DDPFindUnusedStrategy",
    "DDPSpawnStrategy",
    "DDPStrategy",
    "FSDPStrategy",
    "LocalEnvironment",
    "ParallelStrategy",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "__version__",
    "detect_environment",
    "mixed_precision_policy",
]

if t.TYPE_CHECKING:
    from loopkit_ddp.ddp import (
        DDPFindUnusedStrategy,
        DDPSpawnStrategy,
        DDPStrategy,
        ParallelStrategy,
    )
    from loopkit_ddp.environments import (
        ClusterEnvironment,
        LocalEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
        detect_environment,
    )
    from loopkit_ddp.fsdp import FSDPStrategy, mixed_precision_policy


def __getattr__(name: str) -> t.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loopkit_ddp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
