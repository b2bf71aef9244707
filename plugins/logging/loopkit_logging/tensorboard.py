"""``TensorBoardLogger``: scalars and hyperparameters in TensorBoard event files.

Written through ``torch.utils.tensorboard.SummaryWriter`` (imported at the first write, never at
import), one event file per writer in ``root_dir/name/version_N``. Only global rank zero writes;
on other ranks :attr:`TensorBoardLogger.experiment` is an object that ignores every call.
"""

from __future__ import annotations

import collections.abc as c
import os
import typing as t

from loopkit_logging._base import RunFolderLogger, flatten_params, scalar

__all__ = ["TensorBoardLogger"]


class _Ignore:
    """Stands for the SummaryWriter on ranks that do not write: every method does nothing."""

    def __getattr__(self, name: str) -> t.Any:
        return lambda *args, **kwargs: None


class TensorBoardLogger(RunFolderLogger):
    """Log scalars and hyperparameters for TensorBoard (``tensorboard --logdir <root_dir/name>``).

    :param root_dir: see :class:`loopkit_logging.RunFolderLogger` (default: ``LOOPKIT_LOG_DIR``,
        else the Trainer's ``default_root_dir``, else the current directory).
    :param name: folder under ``root_dir`` holding the versions.
    :param version: ``None`` picks the next free ``version_N``.
    :param flush_logs_every_n_steps: flush the event file every N ``log_metrics`` calls (it is
        also flushed at ``finalize``, ``save`` and when an exception reaches the logger).
    :param writer_kwargs: passed to ``SummaryWriter`` (``flush_secs``, ``max_queue``, ...).
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] | None = None,
        name: str | None = "loopkit_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 100,
        **writer_kwargs: t.Any,
    ) -> None:
        super().__init__(root_dir, name, version, flush_logs_every_n_steps)
        if "log_dir" in writer_kwargs or "logdir" in writer_kwargs:
            raise TypeError(
                "TensorBoardLogger picks the writer's folder itself; pass root_dir=, name= and "
                "version= instead of log_dir="
            )
        self._writer_kwargs = writer_kwargs
        self._writer: t.Any = None
        self.hparams: dict[str, t.Any] = {}

    @property
    def experiment(self) -> t.Any:
        """The ``SummaryWriter`` (created on first use), for anything beyond scalars.

        On ranks other than zero, an object that accepts every call and does nothing.
        """
        if self._writer is None:
            if not self.is_global_zero:
                return _Ignore()
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), **self._writer_kwargs)
        return self._writer

    def log_metrics(self, metrics: c.Mapping[str, t.Any], step: int | None = None) -> None:
        """Add one scalar per metric at ``step`` (None: one past the last step logged)."""
        step = self._step(step)
        if not self.is_global_zero:
            return
        values = {name: scalar(name, value) for name, value in metrics.items()}
        writer = self.experiment
        for name, value in values.items():
            writer.add_scalar(name, value, global_step=step)
        self._count_and_maybe_flush()

    def log_hyperparams(self, params: t.Any) -> None:
        """Record hyperparameters for TensorBoard's HPARAMS tab (nested keys become ``a/b``)."""
        flat = {k: _hparam_value(v) for k, v in flatten_params(params).items()}
        self.hparams.update(flat)
        if not self.is_global_zero or not flat:
            return
        from torch.utils.tensorboard.summary import hparams

        writer = self.experiment._get_file_writer()
        # The three summaries TensorBoard's hparams plugin reads, written into this run's own
        # event file (SummaryWriter.add_hparams would start a separate run folder instead).
        for summary in hparams(self.hparams, {}):
            writer.add_summary(summary)
        self.save()

    def save(self) -> None:
        super().save()
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str = "success") -> None:
        """Flush and close the event file; logging again later opens a new one."""
        super().finalize(status)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _hparam_value(value: t.Any) -> t.Any:
    # TensorBoard's hparams accept numbers, strings and booleans; everything else is shown as text.
    if isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None)
    if callable(item) and callable(numel) and numel() == 1:
        return item()
    return str(value)
