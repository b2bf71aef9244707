"""What every loopkit-logging logger shares: rank, run folders, metric values, durability.

A logger writes only on the global-rank-zero process. Its run folder (``root_dir/name/version_N``)
is picked lazily, at the first write, so a logger created by name before the Trainer exists still
lands under the Trainer's ``default_root_dir``. Data reaches the disk every
``flush_logs_every_n_steps`` calls of ``log_metrics``, on ``save()``, on ``finalize()``, and when an
``on_exception`` hook reaches the logger: nothing is registered with ``atexit``.

This module imports neither tensorboard nor tqdm: each logger imports its library when it first
needs it.
"""

from __future__ import annotations

import argparse
import collections.abc as c
import numbers
import os
import re
import sys
import types
import typing as t
from pathlib import Path

from loopkit.plugins import Plugin

__all__ = ["LOG_DIR_ENV", "Logger", "RunFolderLogger", "flatten_params", "global_rank", "scalar"]

#: Environment variable naming the root folder of loggers created without ``root_dir``.
LOG_DIR_ENV = "LOOPKIT_LOG_DIR"

_VERSION_RE = re.compile(r"^version_(\d+)$")
_RANK_ENV = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK")


def global_rank(host: object | None = None) -> int:
    """This process's global rank: the host's when known, else torch.distributed's, else env.

    ``host`` is a Fabric or a Trainer (anything with ``global_rank``). Without one, an initialised
    default process group answers, then the variables launchers set (``RANK``, ``SLURM_PROCID``,
    ``LOCAL_RANK``); a plain single process is rank 0.
    """
    if host is not None:
        rank = getattr(host, "global_rank", None)
        if isinstance(rank, int):
            return rank
    # Only ask torch.distributed when something already imported it: a process group cannot be
    # initialised otherwise, and importing it here would cost the import for nothing.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    for key in _RANK_ENV:
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def scalar(name: str, value: object) -> float | int:
    """``value`` as a Python number (ints stay ints), or a TypeError naming the metric."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    if callable(item):
        count = numel() if callable(numel) else numel
        if count in (None, 1):
            out = item()
            if isinstance(out, (bool, numbers.Integral)):
                return int(out)
            if isinstance(out, numbers.Real):
                return float(out)
    raise TypeError(
        f"metric {name!r} has value {value!r} of type {type(value).__name__}; loggers take "
        "numbers or one-element tensors (log each element under its own name)"
    )


def flatten_params(params: object, sep: str = "/") -> dict[str, t.Any]:
    """Hyperparameters as a flat dict: nested mappings become ``outer/inner`` keys.

    Accepts a mapping, an ``argparse.Namespace`` or a ``types.SimpleNamespace``.
    """
    if isinstance(params, (argparse.Namespace, types.SimpleNamespace)):
        params = vars(params)
    if not isinstance(params, c.Mapping):
        raise TypeError(
            f"log_hyperparams() takes a mapping or a Namespace, got {type(params).__name__}"
        )
    flat: dict[str, t.Any] = {}
    for key, value in params.items():
        if isinstance(value, (argparse.Namespace, types.SimpleNamespace)):
            value = vars(value)
        if isinstance(value, c.Mapping):
            for inner, v in flatten_params(value, sep).items():
                flat[f"{key}{sep}{inner}"] = v
        else:
            flat[str(key)] = value
    return flat


class Logger(Plugin):
    """Base of loopkit-logging's loggers: rank zero only, steps, durability, hooks.

    :param flush_logs_every_n_steps: write buffered data to disk every N ``log_metrics`` calls.

    A logger is a ``Plugin`` of kind ``"logger"``: ``Fabric(loggers="csv")`` and
    ``Trainer(logger="csv")`` create it by name. Used as a context manager it finalizes itself
    on exit, with status ``"success"``, ``"failed"`` or ``"interrupted"``.
    """

    kind = "logger"

    def __init__(self, flush_logs_every_n_steps: int = 100) -> None:
        if (
            isinstance(flush_logs_every_n_steps, bool)
            or not isinstance(flush_logs_every_n_steps, int)
            or flush_logs_every_n_steps < 1
        ):
            raise ValueError(
                f"flush_logs_every_n_steps={flush_logs_every_n_steps!r}: pass a positive int"
            )
        self.flush_logs_every_n_steps = flush_logs_every_n_steps
        self._host: t.Any = None
        self._trainer: t.Any = None
        self._last_step: int | None = None
        self._unflushed = 0

    @property
    def log_dir(self) -> Path | None:
        """Where this logger writes files (None: it writes none)."""
        return None

    # -- who --------------------------------------------------------------------------------

    @property
    def trainer(self) -> t.Any:
        """The Trainer this logger serves, when one has announced itself (else None)."""
        if self._trainer is not None:
            return self._trainer
        return getattr(self._host, "_trainer", None) if self._host is not None else None

    @property
    def is_global_zero(self) -> bool:
        return global_rank(self.trainer or self._host) == 0

    def attach(self, host: t.Any) -> None:
        """Remember the Fabric (or Trainer) this logger serves: its rank and root folder."""
        self._host = host

    # Hooks: a logger that is connected to a bus (Fabric connects logger plugins) learns its
    # Trainer from the first loop hook and makes its data durable when an exception leaves the
    # loop. Every parameter has a default, so the hooks also run when fired by hand.

    def on_fit_start(self, trainer: t.Any = None) -> None:
        if trainer is not None:
            self._trainer = trainer

    def on_train_start(self, trainer: t.Any = None) -> None:
        if trainer is not None:
            self._trainer = trainer

    def on_exception(self, exception: BaseException | None = None) -> None:
        """Write everything logged so far to disk (the loop is about to re-raise)."""
        self.save()

    # -- what -------------------------------------------------------------------------------

    def _step(self, step: object) -> int:
        """``step``, or one past the last step logged when the caller gave none."""
        if step is None:
            number = 0 if self._last_step is None else self._last_step + 1
        elif isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step={step!r}: pass an int (or None to count calls)")
        else:
            number = int(step)
        self._last_step = number
        return number

    def _count_and_maybe_flush(self) -> None:
        self._unflushed += 1
        if self._unflushed >= self.flush_logs_every_n_steps:
            self.save()

    def log_metrics(self, metrics: c.Mapping[str, t.Any], step: int | None = None) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: t.Any) -> None:
        """Record the run's hyperparameters (the default ignores them)."""

    def save(self) -> None:
        """Write buffered data to disk now."""
        self._unflushed = 0

    def finalize(self, status: str = "success") -> None:
        """End of the run (``"success"``, ``"failed"`` or ``"interrupted"``): write everything."""
        self.save()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.finalize("success")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finalize("interrupted")
        else:
            self.finalize("failed")


class RunFolderLogger(Logger):
    """A logger that writes files into a versioned run folder, ``root_dir/name/version_N``.

    :param root_dir: folder that holds ``name/``. ``None`` means: the ``LOOPKIT_LOG_DIR``
        environment variable when set, else the Trainer's ``default_root_dir`` when the logger
        serves a Trainer, else the current directory. Resolved at the first write.
    :param name: folder under ``root_dir`` that holds the versions (``""`` or ``None``: none).
    :param version: ``None`` picks the next free ``version_N`` without touching existing runs; an
        int ``N`` means ``version_N``; a string is used as the folder name. An existing folder
        named explicitly is appended to.
    :param flush_logs_every_n_steps: write buffered data to disk every N ``log_metrics`` calls.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] | None = None,
        name: str | None = "loopkit_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(flush_logs_every_n_steps)
        if isinstance(version, bool) or not (
            version is None or isinstance(version, (int, str))
        ):
            raise TypeError(f"version={version!r}: pass None, an int, or a folder name")
        if isinstance(version, int) and version < 0:
            raise ValueError(f"version={version!r}: versions are counted from 0")
        if isinstance(version, str) and (not version or os.sep in version):
            raise ValueError(f"version={version!r}: pass a plain folder name")
        self._root_dir = None if root_dir is None else Path(root_dir)
        self._name = name or ""
        self._version_arg = version
        self._version: int | str | None = None
        self._log_dir: Path | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def root_dir(self) -> Path:
        """The folder holding ``name/`` (see the class docstring for the default)."""
        if self._root_dir is not None:
            return self._root_dir
        env = os.environ.get(LOG_DIR_ENV)
        if env:
            return Path(env)
        trainer = self.trainer
        default = getattr(trainer, "default_root_dir", None) if trainer is not None else None
        return Path(default) if default is not None else Path.cwd()

    @property
    def version(self) -> int | str:
        """The run's version: picked (and its folder made, on rank zero) on first access."""
        self._resolve()
        return t.cast("int | str", self._version)

    @property
    def log_dir(self) -> Path:
        """``root_dir/name/version_N``: where this run's files are.

        On processes other than rank zero nothing is created, and a picked version is only a
        guess (the authoritative folder is rank zero's).
        """
        self._resolve()
        return t.cast(Path, self._log_dir)

    def _resolve(self) -> None:
        if self._log_dir is not None:
            return
        parent = self.root_dir / self._name if self._name else self.root_dir
        create = self.is_global_zero
        version = self._version_arg
        if version is not None:
            folder = parent / (f"version_{version}" if isinstance(version, int) else version)
            if create:
                folder.mkdir(parents=True, exist_ok=True)
        elif (shared := self._peer_version(parent)) is not None:
            # Loggers of one run (one Fabric or Trainer) share the version a peer picked, so a
            # TensorBoard and a CSV logger write into the same folder.
            version, folder = shared
        else:
            version = _next_version(parent)
            folder = parent / f"version_{version}"
            if create:
                parent.mkdir(parents=True, exist_ok=True)
                # mkdir without exist_ok claims the folder atomically: two runs started at once
                # in the same root never share a version.
                while True:
                    try:
                        folder.mkdir()
                        break
                    except FileExistsError:
                        version += 1
                        folder = parent / f"version_{version}"
        self._version, self._log_dir = version, folder

    def _peer_version(self, parent: Path) -> tuple[int, Path] | None:
        peers: list[t.Any] = []
        for owner in (self.trainer, self._host):
            found = getattr(owner, "loggers", None) if owner is not None else None
            if isinstance(found, (list, tuple)):
                peers.extend(found)
        for peer in peers:
            if (
                peer is not self
                and isinstance(peer, RunFolderLogger)
                and peer._version_arg is None
                and peer._log_dir is not None
                and isinstance(peer._version, int)
                and peer._log_dir.parent == parent
            ):
                return peer._version, peer._log_dir
        return None


def _next_version(parent: Path) -> int:
    if not parent.is_dir():
        return 0
    found = [int(m.group(1)) for p in parent.iterdir() if (m := _VERSION_RE.match(p.name))]
    return max(found) + 1 if found else 0

