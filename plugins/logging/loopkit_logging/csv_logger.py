"""``CSVLogger``: metrics in ``metrics.csv`` and hyperparameters in ``hparams.json``.

``metrics.csv`` has a ``step`` column, then one column per metric name in the order names first
appeared. A name that appears midway adds a column: the file is rewritten (atomically) with the
wider header and every earlier row kept, their new cells empty. Rows are buffered in memory and
reach the disk every ``flush_logs_every_n_steps`` calls, on ``save``/``finalize``, and when an
exception reaches the logger. Only global rank zero writes.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import csv
import json
import os
import tempfile
import typing as t
from pathlib import Path

from loopkit_logging._base import RunFolderLogger, flatten_params, scalar

__all__ = ["CSVLogger"]

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.json"


class CSVLogger(RunFolderLogger):
    """Log metrics to ``<log_dir>/metrics.csv`` and hyperparameters to ``<log_dir>/hparams.json``.

    Same folder layout and arguments as :class:`loopkit_logging.TensorBoardLogger`. Naming an
    existing version appends to its ``metrics.csv``, keeping its columns.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] | None = None,
        name: str | None = "loopkit_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(root_dir, name, version, flush_logs_every_n_steps)
        self._columns: list[str] = ["step"]
        self._written_columns: list[str] | None = None  # header of the file on disk
        self._pending: list[dict[str, float | int]] = []
        self.hparams: dict[str, t.Any] = {}

    @property
    def metrics_file(self) -> Path:
        return self.log_dir / METRICS_FILE

    def log_metrics(self, metrics: c.Mapping[str, t.Any], step: int | None = None) -> None:
        """Append a row: ``step`` (None: one past the last step logged) and the metrics."""
        step = self._step(step)
        if not self.is_global_zero:
            return
        if "step" in metrics:
            raise ValueError(
                "metric name 'step' is taken by metrics.csv's step column; log it under "
                "another name"
            )
        row: dict[str, float | int] = {"step": step}
        for name, value in metrics.items():
            row[str(name)] = scalar(name, value)
            if name not in self._columns:
                self._columns.append(str(name))
        self._pending.append(row)
        self._count_and_maybe_flush()

    def log_hyperparams(self, params: t.Any) -> None:
        """Merge ``params`` into ``hparams.json`` (written at once, atomically)."""
        flat = flatten_params(params)
        self.hparams.update(flat)
        if not self.is_global_zero:
            return
        text = json.dumps(self.hparams, indent=2, sort_keys=True, default=str) + "\n"
        _atomic_write(self.log_dir / HPARAMS_FILE, text)

    def save(self) -> None:
        super().save()
        if not self._pending or not self.is_global_zero:
            return
        path = self.metrics_file
        if self._written_columns is None:
            # First write of this logger: an existing file (a version named again) keeps its
            # columns, in their order, and this run's new names come after them.
            header = _read_header(path)
            if header:
                self._columns = header + [n for n in self._columns if n not in header]
                self._written_columns = header
        if self._written_columns == self._columns:
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns)
                writer.writerows(self._pending)
                f.flush()
                os.fsync(f.fileno())
        else:
            self._rewrite(path)
        self._written_columns = list(self._columns)
        self._pending.clear()

    def _rewrite(self, path: Path) -> None:
        # New columns: the old rows are copied under the wider header, then the file is replaced
        # in one rename, so a crash mid-way leaves the old complete file.
        old_rows: list[dict[str, str]] = []
        if path.exists():
            with open(path, newline="") as f:
                old_rows = list(csv.DictReader(f))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns)
                writer.writeheader()
                writer.writerows(old_rows)
                writer.writerows(self._pending)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _read_header(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), None)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
