"""The kernel's own logging: structlog, quiet unless debugging is turned on.

Nothing here configures structlog globally: loopkit's logger is a private wrapped logger that
writes to stderr, so an application's own structlog configuration is left exactly as it was.
Turn the debug trace on with ``LOOPKIT_DEBUG=1`` in the environment or
:func:`loopkit.set_debug`; it logs plugin resolution and every hook fired, with its receivers
and its time.
"""

from __future__ import annotations

import logging
import os
import sys
import typing as t

#: Read on the bus's hot path: one global bool, so a disabled trace costs one check.
tracing: bool = os.environ.get("LOOPKIT_DEBUG", "") not in ("", "0")

_logger: t.Any = None


def set_debug(enabled: bool = True) -> None:
    """Turn loopkit's debug trace (plugin resolution, every hook fired) on or off."""
    global tracing, _logger
    tracing = enabled
    _logger = None


def logger() -> t.Any:
    """loopkit's structlog logger: warnings always, debug events only while tracing."""
    global _logger
    if _logger is None:
        import structlog

        level = logging.DEBUG if tracing else logging.WARNING
        _logger = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_name="loopkit",
        )
    return _logger
