"""``ConsoleLogger``: metrics as log lines through structlog, readable or JSON.

Human-readable lines by default (coloured on a terminal); one JSON object per line with
``json=True`` (or ``LOOPKIT_LOG_JSON=1`` for a logger created by name). Step, epoch and metrics are
structured fields either way. structlog is used through a private wrapped logger: an application's
own structlog configuration is left as it was. Only global rank zero prints.
"""

from __future__ import annotations

import collections.abc as c
import os
import sys
import typing as t

import structlog

from loopkit_logging._base import Logger, flatten_params, scalar
from loopkit_logging._output import write_line

__all__ = ["JSON_ENV", "ConsoleLogger"]

#: Environment variable that turns JSON lines on for a ConsoleLogger created without ``json=``.
JSON_ENV = "LOOPKIT_LOG_JSON"


class _LineSink:
    """The end of structlog's chain: writes each rendered line, around any live progress bar."""

    def __init__(self, stream: t.TextIO | None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        write_line(message, self._stream if self._stream is not None else sys.stdout)

    info = warning = error = debug = critical = msg


class ConsoleLogger(Logger):
    """Print metrics, hyperparameters and the run's end as structured log lines.

    :param json: one JSON object per line instead of readable text. ``None`` reads the
        ``LOOPKIT_LOG_JSON`` environment variable (``1``/``true`` turn JSON on).
    :param stream: where lines go (default: ``sys.stdout`` at the time of each write).
    :param digits: significant digits of floats in readable lines (JSON keeps full precision).

    A metrics line carries ``step``, ``epoch`` (the Trainer's current epoch when the logger
    serves a Trainer, or an ``epoch`` metric when one is logged) and ``metrics``.
    """

    def __init__(
        self, json: bool | None = None, stream: t.TextIO | None = None, digits: int = 4
    ) -> None:
        super().__init__()
        if json is None:
            json = os.environ.get(JSON_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        if not isinstance(json, bool):
            raise TypeError(f"json={json!r}: pass True (JSON lines) or False (readable lines)")
        if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
            raise ValueError(f"digits={digits!r}: pass a positive int")
        self.json = json
        self.digits = digits
        self._stream = stream
        self._log: t.Any = None

    @property
    def log(self) -> t.Any:
        """The structlog logger lines go through (bind fields to it to add them to each line)."""
        if self._log is None:
            self._log = structlog.wrap_logger(
                _LineSink(self._stream),
                processors=self._processors(),
                wrapper_class=structlog.BoundLogger,
                logger_name="loopkit",
            )
        return self._log

    def _processors(self) -> list[t.Any]:
        if self.json:
            return [
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(sort_keys=False),
            ]
        stream = self._stream if self._stream is not None else sys.stdout
        colors = bool(getattr(stream, "isatty", lambda: False)())
        return [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            self._readable_fields,
            # pad_event is positional: its keyword was renamed across structlog releases.
            structlog.dev.ConsoleRenderer(16, colors=colors, sort_keys=False),
        ]

    def _readable_fields(self, logger: t.Any, method: str, event: dict[str, t.Any]) -> t.Any:
        # Readable lines show each metric as its own key=value, floats shortened.
        for key in ("metrics", "hparams"):
            inner = event.pop(key, None)
            if isinstance(inner, c.Mapping):
                for name, value in inner.items():
                    event[name] = self._short(value)
        return event

    def _short(self, value: t.Any) -> t.Any:
        if isinstance(value, float):
            return f"{value:.{self.digits}g}"
        return value

    # -- the logger contract ----------------------------------------------------------------

    def log_metrics(self, metrics: c.Mapping[str, t.Any], step: int | None = None) -> None:
        """One ``metrics`` line with ``step``, ``epoch`` and ``metrics`` fields."""
        step = self._step(step)
        if not self.is_global_zero:
            return
        values = {str(name): scalar(name, value) for name, value in metrics.items()}
        fields: dict[str, t.Any] = {"step": step}
        epoch = values.pop("epoch", None)
        trainer = self.trainer
        if epoch is None and trainer is not None:
            epoch = getattr(trainer, "current_epoch", None)
        if epoch is not None:
            fields["epoch"] = int(epoch)
        fields["metrics"] = values
        self.log.info("metrics", **fields)

    def log_hyperparams(self, params: t.Any) -> None:
        """One ``hyperparameters`` line with an ``hparams`` field."""
        flat = flatten_params(params)
        if self.is_global_zero and flat:
            plain = {
                k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()
            }
            self.log.info("hyperparameters", hparams=plain)

    def finalize(self, status: str = "success") -> None:
        """One ``run finished`` line with the ``status``."""
        super().finalize(status)
        if self.is_global_zero:
            self.log.info("run finished", status=status)
