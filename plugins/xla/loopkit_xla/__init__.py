"""loopkit-xla: TPUs and other XLA devices for loopkit, through torch_xla's PJRT runtime.

Named through the plugin registry, never imported by the kernel::

    Fabric(accelerator="xla")                       # strategy "xla": one device, or a replica each
    Fabric(accelerator="xla", strategy="xla_spmd")  # one process, batch split over every device

Importing this package imports neither torch nor torch_xla; its classes load on first access.
"""

from __future__ import annotations

import importlib
import typing as t

__all__ = ["XLAAccelerator", "XLARuntime", "XLASPMDStrategy", "XLAStrategy"]

_EXPORTS = {
    "XLAAccelerator": "loopkit_xla.accelerator",
    "XLARuntime": "loopkit_xla._runtime",
    "XLASPMDStrategy": "loopkit_xla.strategy",
    "XLAStrategy": "loopkit_xla.strategy",
}

if t.TYPE_CHECKING:
    from loopkit_xla._runtime import XLARuntime
    from loopkit_xla.accelerator import XLAAccelerator
    from loopkit_xla.strategy import XLASPMDStrategy, XLAStrategy


def __getattr__(name: str) -> t.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loopkit_xla' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
