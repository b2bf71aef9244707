"""The kernel's own logging: structlog, quiet unless the debug trace is turned on.

Nothing here configures structlog globally: loopkit's logger is a private wrapped logger that
writes to the current ``sys.stderr``, so an application's own structlog configuration is left
exactly as it was. Warnings are always written; debug events only while tracing.

Turn the debug trace on with ``LOOPKIT_DEBUG=1`` in the environment (read at import) or
:func:`loopkit.set_debug`. It logs plugin discovery, loading and creation with their times, and
every hook fired with its receivers and its time. While it is off, the bus pays one boolean check
per call and this module never imports structlog.
"""

from __future__ import annotations

import logging
import os
import sys
import typing as t

__all__ = ["add_note", "logger", "set_debug", "tracing"]

#: Read on the bus's hot path: one module global, so a disabled trace costs one check.
tracing: bool = os.environ.get("LOOPKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")

_logger: t.Any = None


def set_debug(enabled: bool = True) -> None:
    """Turn loopkit's debug trace (plugin resolution, every hook fired) on or off."""
    global tracing, _logger
    tracing = bool(enabled)
    _logger = None


class _Stderr:
    """A structlog logger writing each line to whatever ``sys.stderr`` is at that moment."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = error = critical = exception = msg


def logger() -> t.Any:
    """loopkit's structlog logger: warnings always, debug events only while tracing."""
    global _logger
    if _logger is None:
        import structlog

        level = logging.DEBUG if tracing else logging.WARNING
        _logger = structlog.wrap_logger(
            _Stderr(),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_name="loopkit",
        )
    return _logger


def add_note(err: BaseException, note: str) -> None:
    """Attach ``note`` to ``err`` (PEP 678), shown under the traceback."""
    if sys.version_info >= (3, 11):
        err.add_note(note)
    else:  # pragma: no cover - Python 3.10 keeps the notes where 3.11's traceback looks
        err.__notes__ = [*getattr(err, "__notes__", ()), note]  # type: ignore[attr-defined]
