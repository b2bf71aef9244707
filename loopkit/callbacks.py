"""``Callback``: a base class with every declared hook as a do-nothing method.

Subclass it and override the hooks you need, with Lightning's signatures
(``on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx)``) or any subset of the
keyword arguments the hook passes. The defaults are marked with
:func:`loopkit.hooks.default_hook`, so the bus dispatches only to real overrides: subclassing
costs nothing on the hot path. Any object with hook-named methods works as a callback too; this
class is for discoverability.

This module never imports a plugin.
"""

from __future__ import annotations

import collections.abc as c
import math
import os
import re
import typing as t
import warnings
from pathlib import Path

from loopkit.hooks import default_hook

__all__ = ["Callback", "ModelCheckpoint"]

_T = t.Any


class Callback:
    """Base class of trainer and Fabric callbacks; every hook of ``loopkit.hooks`` is here."""

    @property
    def state_key(self) -> str:
        """The key this callback's state is saved under in a checkpoint."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, t.Any]:
        """This callback's state, for checkpoints (empty by default)."""
        return {}

    def load_state_dict(self, state_dict: c.Mapping[str, t.Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @default_hook
    def on_fit_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_fit_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_epoch_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_epoch_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_train_batch_start(
        self, trainer: _T, pl_module: _T, batch: _T, batch_idx: int
    ) -> t.Any: ...

    @default_hook
    def on_train_batch_end(
        self, trainer: _T, pl_module: _T, outputs: _T, batch: _T, batch_idx: int
    ) -> None: ...

    @default_hook
    def on_validation_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_epoch_start(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_epoch_end(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_validation_batch_start(
        self, trainer: _T, pl_module: _T, batch: _T, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    @default_hook
    def on_validation_batch_end(
        self,
        trainer: _T,
        pl_module: _T,
        outputs: _T,
        batch: _T,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...

    @default_hook
    def should_optimizer_step(self, trainer: _T, pl_module: _T, batch_idx: int) -> bool | None:
        """Return False to make this batch accumulate (no optimizer step)."""

    @default_hook
    def on_before_zero_grad(self, trainer: _T, pl_module: _T, optimizer: _T) -> None: ...

    @default_hook
    def on_before_backward(self, trainer: _T, pl_module: _T, loss: _T) -> None: ...

    @default_hook
    def on_after_backward(self, trainer: _T, pl_module: _T) -> None: ...

    @default_hook
    def on_before_optimizer_step(self, trainer: _T, pl_module: _T, optimizer: _T) -> None: ...

    @default_hook
    def on_optimizer_step(self, trainer: _T, pl_module: _T, optimizer: _T) -> None: ...

    @default_hook
    def on_after_setup(self, fabric: _T, module: _T) -> None: ...

    @default_hook
    def on_save_checkpoint(self, trainer: _T, pl_module: _T, checkpoint: _T) -> None: ...

    @default_hook
    def on_load_checkpoint(self, trainer: _T, pl_module: _T, checkpoint: _T) -> None: ...

    @default_hook
    def on_exception(self, trainer: _T, pl_module: _T, exception: BaseException) -> None: ...


# -- ModelCheckpoint ---------------------------------------------------------------------------

#: ``{name}`` or ``{name:format}`` in a checkpoint filename template.
_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


class ModelCheckpoint(Callback):
    """Save the Trainer's checkpoints as it trains: periodically, the best ``save_top_k`` by a
    monitored metric, and ``last.ckpt``.

    The arguments have Lightning's meaning. ``dirpath`` defaults to
    ``<default_root_dir>/checkpoints``; ``filename`` is a template such as
    ``"{epoch}-{val_loss:.2f}"`` filled from ``trainer.callback_metrics``, ``epoch`` and ``step``
    (``auto_insert_metric_name`` writes ``epoch=3-val_loss=0.12``); the default is
    ``"{epoch}-{step}"``. Without ``monitor`` the newest checkpoint is kept (``save_top_k=1``) or
    all of them (``-1``); with it, the ``save_top_k`` best by ``mode``. ``save_last=True`` also
    writes ``last.ckpt`` at every save, which ``trainer.fit(..., ckpt_path="last")`` resumes
    from. Saves happen every ``every_n_train_steps`` optimizer steps, or every
    ``every_n_epochs`` epochs (the default: 1), at the end of the training epoch or, when
    validation runs in the middle of epochs, after validation.

    The Trainer runs this callback's hooks after every other receiver of the hook, so a
    checkpoint sees the hook's work (a scheduler's step, the metrics written) done. Every file is
    written atomically; a file is deleted only after the one replacing it is complete.
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        *,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        save_weights_only: bool = False,
        save_on_train_epoch_end: bool | None = None,
        auto_insert_metric_name: bool = True,
        verbose: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(
                f"ModelCheckpoint(mode={mode!r}): use 'min' (lower {monitor or 'metric'} is "
                "better) or 'max'"
            )
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k!r}): pass -1 (keep every checkpoint), "
                "0 (none) or a positive int"
            )
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) cannot rank "
                "checkpoints without a metric: pass monitor='<a logged metric>', or "
                "save_top_k=1 (keep the newest) or -1 (keep all)"
            )
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(
                f"ModelCheckpoint(monitor={monitor!r}): pass the name a metric was logged "
                "under, e.g. monitor='val_loss'"
            )
        for key, value in (
            ("every_n_train_steps", every_n_train_steps),
            ("every_n_epochs", every_n_epochs),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(
                    f"ModelCheckpoint({key}={value!r}): pass a non-negative int (0 turns "
                    "this trigger off)"
                )
        if every_n_train_steps and every_n_epochs:
            raise ValueError(
                f"ModelCheckpoint(every_n_train_steps={every_n_train_steps}, "
                f"every_n_epochs={every_n_epochs}): the two are exclusive; pass one of them"
            )
        if save_last not in (None, True, False):
            raise ValueError(
                f"ModelCheckpoint(save_last={save_last!r}): pass True to also write "
                f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION} at every save (loopkit "
                "writes a full copy, never a link)"
            )
        if dirpath is not None:
            folder = Path(dirpath).expanduser()
            if folder.exists() and not folder.is_dir():
                raise ValueError(
                    f"ModelCheckpoint(dirpath={os.fspath(dirpath)!r}) is a file; pass a folder "
                    "to write checkpoints into"
                )
            dirpath = os.path.realpath(folder)
        self.dirpath: str | None = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_train_steps = every_n_train_steps or 0
        default_epochs = 0 if self.every_n_train_steps else 1
        self.every_n_epochs = default_epochs if every_n_epochs is None else every_n_epochs
        self.save_weights_only = save_weights_only
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.auto_insert_metric_name = auto_insert_metric_name
        self.verbose = verbose

        self.best_k_models: dict[str, t.Any] = {}
        self.kth_best_model_path = ""
        self.kth_value: t.Any = None
        self.best_model_score: t.Any = None
        self.best_model_path = ""
        self.current_score: t.Any = None
        self.last_model_path = ""
        self._last_global_step_saved = 0  # no checkpoint before the first optimizer step
        self._validated = False
        self._warned_monitor = False

    @property
    def state_key(self) -> str:
        """Two ModelCheckpoints with different settings keep their states apart."""
        settings = {
            "monitor": self.monitor,
            "mode": self.mode,
            "every_n_train_steps": self.every_n_train_steps,
            "every_n_epochs": self.every_n_epochs,
        }
        return f"{type(self).__qualname__}{settings}"

    def __repr__(self) -> str:
        return (
            f"ModelCheckpoint(dirpath={self.dirpath!r}, monitor={self.monitor!r}, "
            f"mode={self.mode!r}, save_top_k={self.save_top_k}, save_last={self.save_last})"
        )

    # -- where files go ---------------------------------------------------------------------

    def resolve_dirpath(self, trainer: _T) -> str:
        """The folder checkpoints go to: ``dirpath``, else ``<default_root_dir>/checkpoints``."""
        if self.dirpath is None:
            root = getattr(trainer, "default_root_dir", None) or os.getcwd()
            self.dirpath = os.path.realpath(os.path.join(root, "checkpoints"))
        return self.dirpath

    def format_checkpoint_name(
        self, metrics: c.Mapping[str, t.Any], filename: str | None = None
    ) -> str:
        """The path a checkpoint with these metrics is saved to (``filename`` or the
        callback's template, filled in)."""
        template = filename if filename is not None else (self.filename or "{epoch}-{step}")
        insert = self.auto_insert_metric_name

        def fill(match: re.Match[str]) -> str:
            name, spec = match.group(1), match.group(2) or ""
            value = metrics.get(name, 0)
            if hasattr(value, "item"):
                value = value.item()
            try:
                text = format(value, spec)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"ModelCheckpoint(filename={template!r}): {{{name}:{spec}}} cannot format "
                    f"{value!r} ({err}); fix the format spec"
                ) from err
            return f"{name}{self.CHECKPOINT_EQUALS_CHAR}{text}" if insert else text

        name = _FIELD.sub(fill, template)
        folder = self.dirpath if self.dirpath is not None else os.getcwd()
        return os.path.join(folder, name + self.FILE_EXTENSION)

    def last_checkpoints(self) -> list[Path]:
        """This callback's ``last`` checkpoint files that exist (for ``ckpt_path="last"``)."""
        found = []
        if self.last_model_path and Path(self.last_model_path).is_file():
            found.append(Path(self.last_model_path))
        if self.dirpath is not None:
            default = Path(self.dirpath) / (self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            if default.is_file() and default not in found:
                found.append(default)
        return found

    # -- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: _T, pl_module: _T) -> None:
        folder = Path(self.resolve_dirpath(trainer))
        self._validated = False
        if trainer.is_global_zero and folder.is_dir():
            # A process killed while writing leaves its temporary file; the checkpoint it was
            # replacing is intact. Sweep such leftovers of our own names.
            for stale in folder.glob(f".*{self.FILE_EXTENSION}.*.tmp"):
                stale.unlink(missing_ok=True)

    def on_train_batch_end(
        self, trainer: _T, pl_module: _T, outputs: _T, batch: _T, batch_idx: int
    ) -> None:
        n = self.every_n_train_steps
        if n < 1 or self._skip(trainer) or trainer.global_step % n != 0:
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: _T, pl_module: _T) -> None:
        if self._skip(trainer) or not self._save_at_train_epoch_end(trainer):
            return
        if self._epoch_due(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: _T, pl_module: _T) -> None:
        if not trainer.training:
            return  # trainer.validate(): nothing is being trained
        self._validated = True
        if self._skip(trainer) or self._save_at_train_epoch_end(trainer):
            return
        if self._epoch_due(trainer):
            self._save(trainer)

    def _skip(self, trainer: _T) -> bool:
        return not trainer.training or self._last_global_step_saved == trainer.global_step

    def _epoch_due(self, trainer: _T) -> bool:
        n = self.every_n_epochs
        return n >= 1 and (trainer.current_epoch + 1) % n == 0

    def _save_at_train_epoch_end(self, trainer: _T) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False  # validation does not run every epoch: the epoch end is the moment
        if not any(trainer.num_val_batches):
            return True  # no validation: the epoch end
        interval = trainer.val_check_interval
        return interval is None or interval == 1.0

    # -- saving -----------------------------------------------------------------------------

    def _candidates(self, trainer: _T) -> dict[str, t.Any]:
        metrics = dict(trainer.callback_metrics)
        metrics.setdefault("epoch", trainer.current_epoch)
        metrics.setdefault("step", trainer.global_step)
        return metrics

    def _save(self, trainer: _T) -> None:
        self.resolve_dirpath(trainer)
        # Before writing: the checkpoint holds this callback's state as it is after the save.
        self._last_global_step_saved = trainer.global_step
        metrics = self._candidates(trainer)
        if self.save_top_k != 0:
            if self.monitor is None:
                self._save_newest(trainer, metrics)
            else:
                self._save_if_top_k(trainer, metrics)
        if self.save_last:
            path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
            previous, self.last_model_path = self.last_model_path, path
            self._write(trainer, path)
            if previous and previous != path:
                self._remove(trainer, previous)

    def _save_newest(self, trainer: _T, metrics: dict[str, t.Any]) -> None:
        path = self.format_checkpoint_name(metrics)
        previous, self.best_model_path = self.best_model_path, path
        self._write(trainer, path)
        if self.save_top_k == 1 and previous and previous != path:
            self._remove(trainer, previous)

    def _save_if_top_k(self, trainer: _T, metrics: dict[str, t.Any]) -> None:
        import torch

        monitor = t.cast(str, self.monitor)
        value = metrics.get(monitor)
        if value is None:
            self._missing_monitor(trainer, metrics)
            return
        current = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(())
        if math.isnan(float(current)):  # a nan is never better than anything
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        k = self.save_top_k
        if k != -1 and len(self.best_k_models) >= k and not self._better(
            current, self.best_k_models[self.kth_best_model_path]
        ):
            if self.verbose:
                self._say(trainer, f"{monitor!r} was not in the top {k}")
            return
        path = self.format_checkpoint_name(metrics)
        doomed = None
        if k != -1 and len(self.best_k_models) >= k and path not in self.best_k_models:
            doomed = self.kth_best_model_path
            del self.best_k_models[doomed]
        self.current_score = current
        self.best_k_models[path] = current
        worst = max if self.mode == "min" else min
        best = min if self.mode == "min" else max
        if k != -1 and len(self.best_k_models) >= k:
            self.kth_best_model_path = worst(
                self.best_k_models, key=lambda p: float(self.best_k_models[p])
            )
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            self._say(
                trainer,
                f"{monitor!r} reached {float(current):.5g} (best "
                f"{float(self.best_model_score):.5g}), saving to {path!r} as top "
                f"{k if k != -1 else 'all'}",
            )
        self._write(trainer, path)
        if doomed is not None and doomed != path:
            self._remove(trainer, doomed)

    def _better(self, current: t.Any, other: t.Any) -> bool:
        if self.mode == "min":
            return float(current) < float(other)
        return float(current) > float(other)

    def _missing_monitor(self, trainer: _T, metrics: dict[str, t.Any]) -> None:
        names = ", ".join(repr(k) for k in metrics if k not in ("epoch", "step")) or "none"
        message = (
            f"ModelCheckpoint(monitor={self.monitor!r}) found no metric {self.monitor!r}; the "
            f"metrics logged are: {names}. Log it with self.log({self.monitor!r}, value), or "
            "monitor one of the logged names"
        )
        validation_expected = any(trainer.num_val_batches) and not self._validated
        if not validation_expected:
            raise ValueError(message)
        if not self._warned_monitor:  # a validation metric may appear once validation has run
            self._warned_monitor = True
            warnings.warn(message + " (skipped until validation has run)", UserWarning, 3)

    def _write(self, trainer: _T, path: str) -> None:
        trainer.save_checkpoint(path, self.save_weights_only)

    def _remove(self, trainer: _T, path: str) -> None:
        # Only files in our own folder, and only once (rank zero writes and deletes).
        if not trainer.is_global_zero or self.dirpath is None:
            return
        if Path(path).parent != Path(self.dirpath):
            return
        if path in self.best_k_models or path == self.last_model_path:
            return
        Path(path).unlink(missing_ok=True)

    def _say(self, trainer: _T, message: str) -> None:
        if trainer.is_global_zero:
            print(f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {message}")

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, t.Any]:
        return {
            "monitor": self.monitor,
            "dirpath": self.dirpath,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: c.Mapping[str, t.Any]) -> None:
        saved_dir = state_dict.get("dirpath")
        self._last_global_step_saved = int(state_dict.get("last_global_step_saved", 0))
        self.best_model_path = state_dict.get("best_model_path", "")
        if self.dirpath is not None and saved_dir is not None and saved_dir != self.dirpath:
            warnings.warn(
                f"ModelCheckpoint's folder changed from {saved_dir!r} to {self.dirpath!r}: only "
                "best_model_path is restored, the top-k ranking and last_model_path start over",
                UserWarning,
                stacklevel=2,
            )
            return
        self.best_model_score = state_dict.get("best_model_score")
        self.current_score = state_dict.get("current_score")
        self.best_k_models = dict(state_dict.get("best_k_models", {}))
        self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
        self.kth_value = state_dict.get("kth_value")
        self.last_model_path = state_dict.get("last_model_path", "")
