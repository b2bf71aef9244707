"""loopkit-logging: loggers and progress bars for loopkit.

Plugins (entry-point group ``loopkit.plugins``): ``tensorboard`` (:class:`TensorBoardLogger`),
``csv`` (:class:`CSVLogger`), ``console`` (:class:`ConsoleLogger`), all of kind ``logger``, and
``progress_bar`` (:class:`ProgressBar`), a subscriber. :func:`track` draws a progress bar in a
Fabric loop.

Importing this package imports none of tensorboard, tqdm or structlog: names load on first use.
"""

from __future__ import annotations

import importlib
import typing as t

__version__ = "0.1.0"

_EXPORTS = {
    "Logger": "loopkit_logging._base",
    "RunFolderLogger": "loopkit_logging._base",
    "LOG_DIR_ENV": "loopkit_logging._base",
    "TensorBoardLogger": "loopkit_logging.tensorboard",
    "CSVLogger": "loopkit_logging.csv_logger",
    "ConsoleLogger": "loopkit_logging.console",
    "JSON_ENV": "loopkit_logging.console",
    "ProgressBar": "loopkit_logging.progress",
    "Tracker": "loopkit_logging.progress",
    "track": "loopkit_logging.progress",
}

# Spelled out (not derived from _EXPORTS) so that linters see the re-exports.
__all__ = [
    "CSVLogger",
    "ConsoleLogger",
    "JSON_ENV",
    "LOG_DIR_ENV",
    "Logger",
    "ProgressBar",
    "RunFolderLogger",
    "TensorBoardLogger",
    "Tracker",
    "__version__",
    "track",
]

if t.TYPE_CHECKING:
    from loopkit_logging._base import LOG_DIR_ENV, Logger, RunFolderLogger
    from loopkit_logging.console import JSON_ENV, ConsoleLogger
    from loopkit_logging.csv_logger import CSVLogger
    from loopkit_logging.progress import ProgressBar, Tracker, track
    from loopkit_logging.tensorboard import TensorBoardLogger


def __getattr__(name: str) -> t.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loopkit_logging' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
