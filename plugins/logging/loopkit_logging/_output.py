"""Writing lines to a terminal that may be showing a progress bar.

A log line printed while a tqdm bar is live would be drawn over by the bar's next refresh; tqdm's
own ``write`` clears the bars, prints, and redraws them. tqdm is only consulted when something
already imported it: no bar can be live otherwise.
"""

from __future__ import annotations

import sys
import typing as t

__all__ = ["is_terminal", "write_line"]


def is_terminal(stream: t.Any) -> bool:
    """Whether ``stream`` is an open interactive terminal (False for pipes, files, None)."""
    isatty = getattr(stream, "isatty", None)
    if not callable(isatty) or getattr(stream, "closed", False):
        return False
    try:
        return bool(isatty())
    except (OSError, ValueError):
        return False


def write_line(line: str, stream: t.TextIO) -> None:
    """Write ``line`` and a newline to ``stream`` without tearing a live progress bar."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and len(getattr(tqdm_module.tqdm, "_instances", ())) > 0:
        tqdm_module.tqdm.write(line, file=stream)
        stream.flush()
        return
    stream.write(line + "\n")
    stream.flush()
