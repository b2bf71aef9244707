"""Trainer checkpoints: what one holds, how it is written and read, and exact resume.

:class:`Checkpointing` is the :class:`~loopkit.Trainer`'s checkpoint machinery.
``trainer.save_checkpoint(path)`` assembles a checkpoint (:meth:`Checkpointing.dump`) and writes
it atomically through the Fabric (strategy or ``checkpoint_io``); ``trainer.fit(...,
ckpt_path=...)`` reads it with ``weights_only=True``, restores everything that changes as
training goes, and resumes the loop where it stopped, part-way through an epoch included.

A checkpoint holds only tensors, numbers, strings, ``None`` and plain containers (RNG states are
stored as tensors, the version as a string), so ``torch.load(weights_only=True)`` reads any
checkpoint loopkit writes with nothing to allow-list.

Where the loop stood (``stage``) is noted by the loop itself before it fires each hook of the
train loop (:class:`~loopkit.loop.Progress`), and for validation by receivers that run before
every other one: a checkpoint taken at ``on_train_batch_end``, ``on_validation_end`` or
``on_train_epoch_end`` by a receiver that runs after the others (:data:`SAVE_PRIORITY`, where
``ModelCheckpoint`` sits) resumes exactly. What "exactly" covers, and what it does not, is in
``docs/checkpoints.md``.

This module must never import a plugin package.
"""

from __future__ import annotations

import collections.abc as c
import os
import random
import sys
import typing as t
import warnings
from pathlib import Path

import torch

from loopkit import __version__
from loopkit.checkpoint import CheckpointError, UnsafeCheckpointError, verify
from loopkit.plugins import Plugin
from loopkit.strategy import move_to_device
from loopkit.wrappers import FabricDataLoader, unwrap

if t.TYPE_CHECKING:
    from loopkit.trainer import Trainer

__all__ = [
    "FORMAT",
    "SAVE_PRIORITY",
    "Checkpointing",
    "ResumableData",
    "rng_state",
    "set_rng_state",
]

#: The layout version of the checkpoints this loopkit writes; a newer one is refused.
FORMAT = 1
#: Receivers connected with this priority run after every other receiver of a hook (the
#: trainer's own bookkeeping and the plugins' included): a checkpoint saved from there sees the
#: hook's work done. ``ModelCheckpoint`` instances are connected with it.
SAVE_PRIORITY = -20_000
_TRACK = 30_000  # where the loop stands: noted before any receiver runs
_APPLY = -30_000  # pending parts of a restore: applied after every receiver of the hook

# Stages a checkpoint can be taken in, and how a run resumed from it continues.
_MID_EPOCH = frozenset({"batch", "batch_end", "validating", "validated"})
_CHECKS_PENDING = frozenset({"batch_end", "validating"})


# -- random number generators -------------------------------------------------------------------


def rng_state() -> dict[str, t.Any]:
    """The global RNG states: python's, torch's (CPU, and CUDA once initialised), numpy's when
    numpy is imported, as tensors and numbers."""
    version, internal, gauss = random.getstate()
    state: dict[str, t.Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
    }
    np = sys.modules.get("numpy")  # not imported: its generator has not been used
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: c.Mapping[str, t.Any]) -> None:
    """Restore what :func:`rng_state` returned (parts it lacks are left alone)."""
    py = state.get("python")
    if py is not None:
        internal = tuple(int(x) for x in py["state"].tolist())
        random.setstate((int(py["version"]), internal, py["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    saved_np = state.get("numpy")
    if saved_np is not None:
        try:
            import numpy as np
        except ImportError:
            pass
        else:
            keys = saved_np["keys"].cpu().numpy().astype(np.uint32)
            np.random.set_state(
                (saved_np["name"], keys, saved_np["pos"], saved_np["has_gauss"], saved_np["gauss"])
            )
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        for index, device_state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(device_state.cpu(), index)


# -- the training data ----------------------------------------------------------------------------


def _generators(loader: t.Any) -> list[torch.Generator]:
    """The torch generators a dataloader shuffles and seeds its workers with, if any."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(loader, "sampler", None)
    owners = (loader, sampler, getattr(batch_sampler, "sampler", None))
    for owner in owners:
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not f for f in found):
            found.append(gen)
    return found


def _stateful(obj: object) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


class _Indices:
    """Stands in for a map-style DataLoader's index sampler (its ``batch_sampler``, or its
    ``sampler`` when it does not batch) while the Trainer iterates it.

    The body of ``__iter__`` runs at the first index pulled, not when ``iter()`` is called (a
    DataLoader may call it twice while setting up, and a persistent iterator resets without
    drawing a new worker seed): that is the moment the sampler draws its randomness. Then, once
    per epoch, it runs the plan :class:`ResumableData` left: note the RNG states (``watch``), or
    put back the states noted in the interrupted run, draw the indices of the batches already
    trained without yielding them, and hand the states the loop had back (``resume``).
    """

    def __init__(self, inner: t.Any, owner: ResumableData) -> None:
        self._inner, self._owner = inner, owner

    def __iter__(self) -> c.Iterator[t.Any]:
        owner = self._owner
        plan, owner._plan = owner._plan, None
        if plan is None:
            yield from self._inner
            return
        if plan[0] == "watch":
            owner.epoch_start = owner._snapshot()
            yield from self._inner
            return
        _, start, saved, back = plan
        if saved is not None:
            owner._restore_snapshot(saved)
        owner.epoch_start = saved if saved is not None else owner._snapshot()
        it = iter(self._inner)
        for _ in range(start):
            if next(it, _END) is _END:
                break
        back()
        yield from it

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> t.Any:
        # .sampler, .batch_size, .drop_last, .set_epoch: what DataLoader and Fabric look for.
        if name in ("_inner", "_owner"):
            raise AttributeError(name)
        return getattr(self._inner, name)


_END = object()


class ResumableData:
    """The training data as the Trainer's loop iterates it.

    Each epoch it notes the RNG and generator states the epoch's order of batches is drawn
    from, so that a checkpoint taken part-way through the epoch can recreate that order. A
    resumed epoch (:meth:`iter_from`) starts at its first batch not yet trained:

    * a loader, sampler or dataset that offers ``state_dict``/``load_state_dict`` resumes
      itself (its state is in the checkpoint);
    * a map-style ``DataLoader`` draws the indices of the batches already trained from its
      sampler and drops them, without loading them;
    * any other iterable is read from its start and the batches already trained are dropped.

    For a map-style ``DataLoader`` the loader's index sampler is replaced, while fitting, by a
    stand-in that forwards everything to it (:meth:`close` puts it back).
    """

    def __init__(self, data: t.Any, progress: t.Any) -> None:
        self.data = data
        self.progress = progress
        self.loader = unwrap(data)
        #: RNG and generator states the running epoch's order of batches was drawn from.
        self.epoch_start: dict[str, t.Any] | None = None
        self._resume_from: dict[str, t.Any] | None = None
        self._plan: tuple[t.Any, ...] | None = None
        self._indices: _Indices | None = None
        self._attr = ""
        if self.resume_mode() == "sampler":
            loader = self.loader
            self._attr = "batch_sampler" if loader.batch_sampler is not None else "sampler"
            current = getattr(loader, self._attr)
            inner = current._inner if isinstance(current, _Indices) else current
            self._indices = _Indices(inner, self)
            # DataLoader refuses plain assignment of its samplers after __init__.
            object.__setattr__(loader, self._attr, self._indices)

    def close(self) -> None:
        """Give the DataLoader its own index sampler back."""
        indices = self._indices
        self._indices = None
        if indices is None:
            return
        inner = indices._inner
        if getattr(self.loader, self._attr, None) is indices:
            object.__setattr__(self.loader, self._attr, inner)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> c.Iterator[t.Any]:
        self._sync_epoch()
        if self._indices is not None:
            self._plan = ("watch",)
        else:
            self.epoch_start = self._snapshot()
        return iter(self.data)

    def iter_from(self, start: int) -> c.Iterator[t.Any]:
        """An iterator over the running epoch's batches from batch ``start`` on."""
        self._sync_epoch()
        saved, self._resume_from = self._resume_from, None
        if self.resume_mode() == "self":
            self.epoch_start = saved if saved is not None else self._snapshot()
            return iter(self.data)
        return self._replayed(start, saved)

    def resume_mode(self) -> str:
        """``"self"``, ``"sampler"`` or ``"read"``: how a resumed epoch skips what was trained."""
        from torch.utils.data import DataLoader, IterableDataset

        loader = self.loader
        if _stateful(loader):
            return "self"
        if isinstance(loader, DataLoader):
            if isinstance(loader.dataset, IterableDataset):
                return "self" if _stateful(loader.dataset) else "read"
            index = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
            if _stateful(index) or _stateful(getattr(index, "sampler", None)):
                return "self"
            return "sampler"
        return "read"

    def _replayed(self, start: int, saved: dict[str, t.Any] | None) -> c.Iterator[t.Any]:
        # Runs at the first batch the loop asks for: everything before it happened already.
        now = rng_state()
        done = False

        def back() -> None:  # the states the loop had: the replay must not change them
            nonlocal done
            if not done:
                done = True
                set_rng_state(now)

        if self._indices is not None:
            self._plan = ("resume", start, saved, back)
            try:
                it = iter(self.data)
                first = next(it)
            except StopIteration:
                return
            finally:
                self._plan = None
                back()
            yield first
            yield from it
            return
        if saved is not None:
            self._restore_snapshot(saved)
        self.epoch_start = saved if saved is not None else self._snapshot()
        it = iter(self.data)
        try:
            for _ in range(start):
                next(it)
        except StopIteration:
            return
        finally:
            back()
        yield from it

    def _sync_epoch(self) -> None:
        # A FabricDataLoader sets its sampler's epoch (DistributedSampler shuffling) from how
        # many times it was iterated; a resumed run starts that count at the resumed epoch.
        if isinstance(self.data, FabricDataLoader):
            self.data._epoch = self.progress.epoch

    def _snapshot(self) -> dict[str, t.Any]:
        return {
            "rng": rng_state(),
            "generators": [g.get_state() for g in _generators(self.loader)],
        }

    def _restore_snapshot(self, snapshot: c.Mapping[str, t.Any]) -> None:
        set_rng_state(snapshot["rng"])
        for gen, state in zip(_generators(self.loader), snapshot.get("generators", [])):
            gen.set_state(state.cpu())

    def _parts(self) -> list[tuple[str, t.Any]]:
        loader = self.loader
        parts = [("loader", loader)]
        for key in ("sampler", "batch_sampler", "dataset"):
            obj = getattr(loader, key, None)
            if isinstance(obj, _Indices):
                obj = obj._inner
            if obj is not None:
                parts.append((key, obj))
        return [(key, obj) for key, obj in parts if _stateful(obj)]

    def state_dict(self, mid_epoch: bool) -> dict[str, t.Any]:
        state: dict[str, t.Any] = {"generators": [g.get_state() for g in _generators(self.loader)]}
        if mid_epoch and self.epoch_start is not None:
            state["epoch_start"] = self.epoch_start
        for key, obj in self._parts():
            state[key] = obj.state_dict()
        return state

    def load_state_dict(self, state: c.Mapping[str, t.Any], mid_epoch: bool) -> None:
        for gen, saved in zip(_generators(self.loader), state.get("generators", [])):
            gen.set_state(saved.cpu())
        for key, obj in self._parts():
            if key in state:
                obj.load_state_dict(state[key])
        self._resume_from = state.get("epoch_start") if mid_epoch else None


# -- the trainer's checkpoints ------------------------------------------------------------------


def _keyed(objects: c.Iterable[t.Any], key_of: c.Callable[[t.Any], str]) -> list[tuple[str, t.Any]]:
    """``(key, obj)`` pairs; a key seen before gets ``#1``, ``#2``... in order."""
    seen: dict[str, int] = {}
    out = []
    for obj in objects:
        key = key_of(obj)
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append((key if n == 0 else f"{key}#{n}", obj))
    return out


def _callback_key(cb: object) -> str:
    key = getattr(cb, "state_key", None)
    return key if isinstance(key, str) else type(cb).__qualname__


def _plugin_key(plugin: object) -> str:
    name = getattr(plugin, "plugin_name", None)
    return name if isinstance(name, str) else type(plugin).__qualname__


def _plain(value: object) -> bool:
    """Whether ``value`` is data ``weights_only`` loading accepts without allow-listing."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


def _own_method(obj: object, name: str) -> bool:
    """Whether ``obj`` overrides the do-nothing ``Plugin`` method ``name``."""
    return getattr(type(obj), name, None) is not getattr(Plugin, name)


class Checkpointing:
    """The Trainer's checkpoints: assembling, writing, reading and resuming.

    Created by the Trainer with its bus ready. It connects the trainer's ``ModelCheckpoint``
    callbacks after every other receiver (:data:`SAVE_PRIORITY`) and notes, before any receiver
    runs, that validation started or ended; the loop notes the rest (``progress.stage``).
    """

    def __init__(self, trainer: Trainer) -> None:
        from loopkit.callbacks import ModelCheckpoint

        self.trainer = trainer
        self.data: ResumableData | None = None
        self.step: t.Any = None
        self._pending_rng: dict[str, t.Any] | None = None
        self._pending_at_epoch_start = False
        self._pending_aggregates: dict[str, t.Any] | None = None
        bus = trainer.fabric.bus
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint):
                bus.disconnect(cb)
                bus.connect(cb, priority=SAVE_PRIORITY)
        bus.connect(self._validation_start, "on_validation_start", priority=_TRACK)
        bus.connect(self._validation_end, "on_validation_end", priority=_TRACK)
        bus.connect(self._close, "on_fit_end", priority=_APPLY)
        bus.connect(self._close, "on_exception", priority=_APPLY)
        bus.connect(self._apply_at_train_start, "on_train_start", priority=_APPLY)
        bus.connect(self._apply_at_epoch_start, "on_train_epoch_start", priority=_APPLY)

    # -- where the loop stands ------------------------------------------------------------------

    @property
    def stage(self) -> str:
        """Where the loop stands: idle, epoch_start, batch, batch_end, validating, validated,
        epoch_end or ended."""
        return self.trainer.progress.stage

    @stage.setter
    def stage(self, value: str) -> None:
        self.trainer.progress.stage = value

    @property
    def batches_done(self) -> int:
        """Batches of the running epoch whose ``on_train_batch_end`` has fired."""
        return self.trainer.progress.batches_done

    @batches_done.setter
    def batches_done(self, value: int) -> None:
        self.trainer.progress.batches_done = value

    def _validation_start(self) -> None:
        if self.trainer.training:
            self.stage = "validating"

    def _validation_end(self) -> None:
        if self.trainer.training:
            self.stage = "validated"

    def _close(self) -> None:
        if self.data is not None:
            self.data.close()

    # -- back from started processes --------------------------------------------------------------

    def for_parent(self) -> dict[str, t.Any]:
        """What a process that started this run (``ddp_spawn``) gets back once ``fit`` ends: the
        module's weights, the loop's counters, the metrics and the stateful callbacks' states
        (a ``ModelCheckpoint``'s ``best_model_path``...), tensors on the CPU. Collective where
        the strategy gathers the module's state: every rank calls it."""
        trainer = self.trainer
        p = trainer.progress
        metrics = trainer._metrics
        callbacks = [cb for cb in trainer.callbacks if _stateful(cb)]
        state = {
            "state_dict": trainer.fabric.strategy.module_state_dict(trainer.lightning_module),
            "progress": {
                **p.state_dict(),
                "should_stop": p.should_stop,
                "stage": p.stage,
                "batches_done": p.batches_done,
            },
            "metrics": {
                "callback": metrics.callback,
                "logged": metrics.logged,
                "pbar": metrics.pbar,
            },
            "callbacks": {key: cb.state_dict() for key, cb in _keyed(callbacks, _callback_key)},
        }
        return t.cast(dict[str, t.Any], move_to_device(state, torch.device("cpu")))

    def recover(self, module: torch.nn.Module, state: c.Mapping[str, t.Any]) -> None:
        """Take what :meth:`for_parent` sent: ``module`` (this process's), the counters, metrics
        and callbacks end as the run's rank zero ended (optimizer states stay behind, as in
        Lightning)."""
        trainer = self.trainer
        _load_module(module, state["state_dict"], Path("<started processes>"))
        p, saved = trainer.progress, state["progress"]
        p.load_state_dict(saved)
        p.should_stop = bool(saved["should_stop"])
        p.stage, p.batches_done = str(saved["stage"]), int(saved["batches_done"])
        metrics = trainer._metrics
        metrics.callback = dict(state["metrics"]["callback"])
        metrics.logged = dict(state["metrics"]["logged"])
        metrics.pbar = dict(state["metrics"]["pbar"])
        callbacks = [cb for cb in trainer.callbacks if _stateful(cb)]
        for key, cb in _keyed(callbacks, _callback_key):
            if key in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][key])

    # -- fit ------------------------------------------------------------------------------------

    def begin_fit(
        self,
        train_loader: t.Any,
        step: t.Any,
        ckpt_path: str | os.PathLike[str] | None,
        weights_only: bool,
    ) -> ResumableData:
        """Wrap the training data; restore ``ckpt_path`` when given. Returns what the loop
        iterates."""
        # The automatic step object (a bound method of it may be what the loop calls).
        self.step = getattr(step, "__self__", step)
        self.stage, self.batches_done = "idle", 0
        self._close()
        self.data = ResumableData(train_loader, self.trainer.progress)
        self._check_callbacks()
        if ckpt_path is not None:
            path = self.resolve(ckpt_path, "fit")
            if path is not None:
                self.restore(path, weights_only)
        return self.data

    def _check_callbacks(self) -> None:
        """Two ModelCheckpoints writing the same file names into one folder would delete each
        other's files: refuse before training."""
        claimed: dict[tuple[str, str], int] = {}
        for i, cb in enumerate(self.checkpoint_callbacks()):
            folder = cb.resolve_dirpath(self.trainer)
            names = [cb.filename or "{epoch}-{step}"] if cb.save_top_k != 0 else []
            if cb.save_last:
                names.append(cb.CHECKPOINT_NAME_LAST)
            for name in names:
                other = claimed.setdefault((folder, name), i)
                if other != i:
                    raise ValueError(
                        f"two ModelCheckpoint callbacks (numbers {other} and {i} among the "
                        f"trainer's) write files named {name!r} into {folder!r}, so each would "
                        "delete or overwrite the other's. Give one of them another filename= or "
                        "dirpath="
                    )

    def checkpoint_callbacks(self) -> list[t.Any]:
        from loopkit.callbacks import ModelCheckpoint

        return [cb for cb in self.trainer.callbacks if isinstance(cb, ModelCheckpoint)]

    def resolve(self, ckpt_path: str | os.PathLike[str], what: str) -> Path | None:
        """The file ``ckpt_path`` names: a path, ``"last"`` or ``"best"`` (None: no last yet)."""
        if isinstance(ckpt_path, str) and ckpt_path in ("last", "best"):
            callbacks = self.checkpoint_callbacks()
            if not callbacks:
                raise ValueError(
                    f"{what}(ckpt_path={ckpt_path!r}) looks for the checkpoints of the trainer's "
                    "ModelCheckpoint, but it has none (enable_checkpointing=False and no "
                    "ModelCheckpoint in callbacks); pass the checkpoint's path instead"
                )
            for cb in callbacks:
                cb.resolve_dirpath(self.trainer)
            if ckpt_path == "best":
                best = next((cb.best_model_path for cb in callbacks if cb.best_model_path), "")
                if not best:
                    raise ValueError(
                        f"{what}(ckpt_path='best'): no best checkpoint is known yet (no "
                        "ModelCheckpoint with a monitor has saved one in this trainer); pass the "
                        "checkpoint's path instead"
                    )
                return Path(best)
            found: list[Path] = [p for cb in callbacks for p in cb.last_checkpoints()]
            if not found:
                folders = ", ".join(dict.fromkeys(repr(cb.dirpath) for cb in callbacks))
                warnings.warn(
                    f"{what}(ckpt_path='last') found no last checkpoint in {folders}: training "
                    "starts from the beginning",
                    UserWarning,
                    stacklevel=4,
                )
                return None
            return max(found, key=lambda p: p.stat().st_mtime_ns)
        if not isinstance(ckpt_path, (str, os.PathLike)):
            raise TypeError(f"{what}(ckpt_path={ckpt_path!r}): pass a file path, 'last' or 'best'")
        path = Path(ckpt_path)
        if not path.exists():
            raise FileNotFoundError(
                f"{what}(ckpt_path={os.fspath(ckpt_path)!r}): no such file. Pass the path of a "
                "checkpoint written by trainer.save_checkpoint() or ModelCheckpoint, or 'last' "
                "for the newest last.ckpt of the trainer's ModelCheckpoint"
            )
        return path

    # -- saving ----------------------------------------------------------------------------------

    def save(self, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
        """Assemble a checkpoint and write it atomically (on the processes the strategy writes
        from)."""
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(
                f"save_checkpoint(filepath={filepath!r}): pass a file path such as 'last.ckpt'"
            )
        checkpoint = self.dump(weights_only)
        self.trainer.fabric.save(filepath, checkpoint)

    def dump(self, weights_only: bool = False) -> dict[str, t.Any]:
        """The checkpoint of the trainer as it stands now (``weights_only``: the module's only)."""
        trainer = self.trainer
        module = trainer._module
        if module is None:
            raise RuntimeError(
                "save_checkpoint() needs a module: call it during or after trainer.fit(module)"
            )
        p = trainer.progress
        fabric = trainer.fabric
        rng = rng_state()
        checkpoint: dict[str, t.Any] = {
            "loopkit_version": __version__,
            "format": FORMAT,
            "epoch": p.epoch,
            "global_step": p.global_step,
            "state_dict": fabric.strategy.module_state_dict(module),
        }
        hparams = {k: v for k, v in dict(module.hparams).items() if _plain(v)}
        if hparams:
            checkpoint["hyper_parameters"] = hparams
        if weights_only:
            return checkpoint
        mid_epoch = self.stage in _MID_EPOCH and self.batches_done > 0
        step = self.step
        accumulated = [bool(a) for a in getattr(step, "accumulated", [])]
        checkpoint["loops"] = {
            "stage": self.stage,
            "batches_done": self.batches_done,
            "is_last_batch": p.is_last_batch,
            "total_batches": p.total_batches,
            "should_stop": p.should_stop,
            "accumulated": accumulated,
        }
        checkpoint["optimizer_states"] = [unwrap(o).state_dict() for o in trainer.optimizers]
        checkpoint["lr_schedulers"] = [
            config.scheduler.state_dict() for config in trainer.lr_scheduler_configs
        ]
        checkpoint["precision"] = fabric.precision.state_dict()
        checkpoint["strategy"] = fabric.strategy.state_dict()
        plugins = [*fabric.plugins, *(lg for lg in fabric.loggers if isinstance(lg, Plugin))]
        checkpoint["plugins"] = {
            key: plugin.state_dict() for key, plugin in _keyed(plugins, _plugin_key)
        }
        callbacks = [cb for cb in trainer.callbacks if _stateful(cb)]
        checkpoint["callbacks"] = {
            key: cb.state_dict() for key, cb in _keyed(callbacks, _callback_key)
        }
        checkpoint["rng"] = rng
        if self.data is not None:
            checkpoint["data"] = self.data.state_dict(mid_epoch)
        checkpoint["metrics"] = _metrics_state(trainer._metrics)
        grads = self._gradients(module, accumulated)
        if grads:
            checkpoint["gradients"] = grads
        fabric.call("on_save_checkpoint", trainer=trainer, module=module, checkpoint=checkpoint)
        return checkpoint

    def _gradients(self, module: torch.nn.Module, accumulated: list[bool]) -> dict[str, t.Any]:
        # Automatic optimization: only an open accumulation window's gradients are still to be
        # used. Manual optimization: the trainer cannot know, so any gradient is kept.
        automatic = getattr(module, "automatic_optimization", True)
        if automatic and not any(accumulated):
            return {}
        return {
            name: param.grad.detach()
            for name, param in module.named_parameters()
            if param.grad is not None
        }

    # -- loading ---------------------------------------------------------------------------------

    def read(self, path: Path, weights_only: bool, what: str) -> dict[str, t.Any]:
        """The checkpoint at ``path``, checked: integrity, safety, a dict with a module."""
        verify(path)
        try:
            checkpoint = self.trainer.fabric.load(path, weights_only=weights_only)
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(
                f"{err} To load it with the Trainer: {what}(..., ckpt_path={str(path)!r}, "
                "weights_only=False) if you trust the file, or allow just the types it needs: "
                f"with torch.serialization.safe_globals([MyType]): trainer.{what}(...)"
            ) from err.__cause__
        if not isinstance(checkpoint, dict):
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint "
                "dict; loopkit checkpoints are written by trainer.save_checkpoint() or "
                "ModelCheckpoint"
            )
        if "state_dict" not in checkpoint:
            keys = ", ".join(map(str, list(checkpoint)[:5])) or "none"
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no 'state_dict' entry (its keys: {keys}). If it is "
                "a bare module state dict (torch.save(model.state_dict())), load it into the "
                "module yourself: module.load_state_dict(loopkit.checkpoint.safe_load(path)), "
                "and fit without ckpt_path"
            )
        fmt = checkpoint.get("format", FORMAT)
        if isinstance(fmt, int) and fmt > FORMAT:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written by loopkit "
                f"{checkpoint.get('loopkit_version')} in checkpoint format {fmt}; this loopkit "
                f"({__version__}) reads format {FORMAT} and older. Upgrade loopkit to load it"
            )
        return checkpoint

    def load_weights(
        self, module: torch.nn.Module, ckpt_path: str | os.PathLike[str], weights_only: bool
    ) -> None:
        """Load only the module's weights from ``ckpt_path`` (``validate(ckpt_path=...)``)."""
        path = self.resolve(ckpt_path, "validate")
        if path is None:
            return
        checkpoint = self.read(path, weights_only, "validate")
        _load_module(module, checkpoint["state_dict"], path)

    def restore(self, path: Path, weights_only: bool = True) -> None:
        """Restore the trainer from the checkpoint at ``path`` (fit has set everything up)."""
        trainer = self.trainer
        module = trainer.lightning_module
        checkpoint = self.read(path, weights_only, "fit")
        trainer.fabric.call(
            "on_load_checkpoint", trainer=trainer, module=module, checkpoint=checkpoint
        )
        foreign = "loopkit_version" not in checkpoint
        if not foreign and "loops" not in checkpoint:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds only the module's weights (saved with "
                "weights_only=True, or by ModelCheckpoint(save_weights_only=True)), so training "
                "cannot resume from it. Load the weights into the module "
                "(module.load_state_dict(loopkit.checkpoint.safe_load(path)['state_dict'])) and "
                "fit without ckpt_path, or resume from a full checkpoint"
            )
        _load_module(module, checkpoint["state_dict"], path)
        self._load_optimizers(checkpoint, path)
        self._load_slots(checkpoint, path)
        if foreign:
            self._load_foreign(checkpoint, path)
            return
        p = trainer.progress
        loops = checkpoint["loops"]
        p.epoch = int(checkpoint["epoch"])
        p.global_step = int(checkpoint["global_step"])
        p.total_batches = int(loops["total_batches"])
        stage, done = str(loops["stage"]), int(loops["batches_done"])
        is_last = bool(loops["is_last_batch"])
        mid_epoch = stage in _MID_EPOCH and done > 0
        if mid_epoch:
            if stage == "batch":  # taken inside a batch: that batch runs again from its start
                is_last = False
            assert trainer.loop is not None
            trainer.loop.resume(done, is_last, stage in _CHECKS_PENDING)
            p.batch_idx, p.is_last_batch = done - 1, is_last
            p.should_stop = bool(loops["should_stop"])
        elif stage == "epoch_end":
            p.epoch += 1
            p.should_stop = bool(loops["should_stop"])
        step = self.step
        accumulated = list(loops.get("accumulated", []))
        current = getattr(step, "accumulated", None)
        if isinstance(current, list) and len(current) == len(accumulated):
            current[:] = [bool(a) for a in accumulated]
        grads = checkpoint.get("gradients")
        if grads:
            params = dict(module.named_parameters())
            for name, grad in grads.items():
                if name in params:
                    params[name].grad = grad.to(params[name].device)
        if self.data is not None and "data" in checkpoint:
            self.data.load_state_dict(checkpoint["data"], mid_epoch)
        metrics = checkpoint.get("metrics")
        if metrics:
            self._pending_aggregates = _load_metrics(trainer._metrics, metrics)
        self._pending_rng = checkpoint.get("rng")
        self._pending_at_epoch_start = mid_epoch

    def _load_optimizers(self, checkpoint: c.Mapping[str, t.Any], path: Path) -> None:
        trainer = self.trainer
        states = checkpoint.get("optimizer_states")
        if states is not None:
            if len(states) != len(trainer.optimizers):
                raise CheckpointError(
                    f"checkpoint {str(path)!r} holds the state of {len(states)} optimizer(s), "
                    f"but configure_optimizers() returned {len(trainer.optimizers)}; resume with "
                    "the configuration the checkpoint was saved with"
                )
            for opt, state in zip(trainer.optimizers, states):
                unwrap(opt).load_state_dict(state)
        schedulers = checkpoint.get("lr_schedulers")
        if schedulers is not None:
            configs = trainer.lr_scheduler_configs
            if len(schedulers) != len(configs):
                raise CheckpointError(
                    f"checkpoint {str(path)!r} holds the state of {len(schedulers)} LR "
                    f"scheduler(s), but configure_optimizers() returned {len(configs)}; resume "
                    "with the configuration the checkpoint was saved with"
                )
            for config, state in zip(configs, schedulers):
                config.scheduler.load_state_dict(state)

    def _load_slots(self, checkpoint: c.Mapping[str, t.Any], path: Path) -> None:
        trainer = self.trainer
        fabric = trainer.fabric
        for key, slot in (("precision", fabric.precision), ("strategy", fabric.strategy)):
            saved = checkpoint.get(key)
            if not saved:
                continue  # nothing was saved: the slot starts fresh (a new grad scaler)
            if not _own_method(slot, "load_state_dict"):
                warnings.warn(
                    f"checkpoint {str(path)!r} holds {key} state ({', '.join(map(str, saved))}) "
                    f"that this run's {key} ({slot!r}) does not keep; it was not restored",
                    UserWarning,
                    stacklevel=5,
                )
                continue
            slot.load_state_dict(saved)
        plugins = [*fabric.plugins, *(lg for lg in fabric.loggers if isinstance(lg, Plugin))]
        saved_plugins = checkpoint.get("plugins", {})
        for key, plugin in _keyed(plugins, _plugin_key):
            state = saved_plugins.get(key)
            if state:
                plugin.load_state_dict(state)
        saved_callbacks = checkpoint.get("callbacks", {})
        callbacks = [cb for cb in trainer.callbacks if _stateful(cb)]
        for key, cb in _keyed(callbacks, _callback_key):
            if key in saved_callbacks:
                cb.load_state_dict(saved_callbacks[key])

    def _load_foreign(self, checkpoint: c.Mapping[str, t.Any], path: Path) -> None:
        p = self.trainer.progress
        p.epoch = int(checkpoint.get("epoch", 0))
        p.global_step = int(checkpoint.get("global_step", 0))
        restored = ["module"]
        if "optimizer_states" in checkpoint:
            restored.append("optimizers")
        if "lr_schedulers" in checkpoint:
            restored.append("LR schedulers")
        warnings.warn(
            f"checkpoint {str(path)!r} was not written by loopkit: restored the "
            f"{', '.join(restored)} and the counters (epoch {p.epoch}, global_step "
            f"{p.global_step}); RNG states and the data position were not, so training restarts "
            f"at the beginning of epoch {p.epoch} and does not repeat the original run exactly",
            UserWarning,
            stacklevel=4,
        )

    # -- parts of a restore applied when the loop reaches them -------------------------------------

    def _apply_at_train_start(self) -> None:
        if self._pending_rng is not None and not self._pending_at_epoch_start:
            state, self._pending_rng = self._pending_rng, None
            set_rng_state(state)

    def _apply_at_epoch_start(self) -> None:
        # A resumed epoch fires on_train_epoch_start again; the states go back after it.
        if self._pending_rng is not None:
            state, self._pending_rng = self._pending_rng, None
            set_rng_state(state)
        if self._pending_aggregates is not None:
            self.trainer._metrics.train_aggs = self._pending_aggregates
            self._pending_aggregates = None


def _load_module(module: torch.nn.Module, state: t.Any, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit {type(module).__name__}: {err}"
        ) from err


# -- the trainer's metrics ------------------------------------------------------------------------


def _metrics_state(metrics: t.Any) -> dict[str, t.Any]:
    aggregates = {}
    for name, agg in metrics.train_aggs.items():
        if not isinstance(agg.fx, str):
            continue  # a reduction function is code, not data: it cannot be stored
        aggregates[name] = {
            "fx": agg.fx,
            "total": agg.total,
            "weight": agg.weight,
            "values": list(agg.values),
            "flags": [agg.prog_bar, agg.logger, agg.sync, agg.forked],
        }
    return {
        "callback": dict(metrics.callback),
        "progress_bar": dict(metrics.pbar),
        "train_aggregates": aggregates,
    }


def _load_metrics(metrics: t.Any, state: c.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Restore the latest values now; return the epoch aggregates, to apply at epoch start."""
    from loopkit.trainer import _Aggregate

    metrics.callback.update(state.get("callback", {}))
    metrics.pbar.update(state.get("progress_bar", {}))
    aggregates = {}
    for name, saved in state.get("train_aggregates", {}).items():
        prog_bar, logger, sync, forked = saved["flags"]
        agg = _Aggregate(saved["fx"], prog_bar, logger, sync, forked)
        agg.total, agg.weight, agg.values = saved["total"], saved["weight"], list(saved["values"])
        aggregates[name] = agg
    return aggregates
