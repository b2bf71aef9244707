"""``LoopModule``: the LightningModule-shaped user API that ``loopkit.Trainer`` runs.

A ``LoopModule`` is a plain :class:`torch.nn.Module` with the methods the reference documents
use (``training_step``, ``configure_optimizers``, ``optimizer_step``, ``optimizers()``,
``manual_backward``, ``log``...). It holds no loop logic: everything that needs the running loop
asks the trainer it is attached to. Its hook methods are do-nothing defaults marked with
:func:`loopkit.hooks.default_hook`, so the bus only dispatches to the ones a subclass overrides.

This module must never import a plugin: toggling reaches the ``toggling`` plugin through the
registry, by name.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import inspect
import typing as t
import warnings

import torch
from torch import nn

from loopkit.hooks import default_hook
from loopkit.plugins import PluginNotFoundError, registry
from loopkit.wrappers import FabricOptimizer

if t.TYPE_CHECKING:
    from loopkit.trainer import Trainer

__all__ = ["AttributeDict", "LoopModule", "LoopOptimizer", "get_toggling"]


class AttributeDict(dict[str, t.Any]):
    """A dict whose keys read as attributes: ``self.hparams.learning_rate``."""

    def __getattr__(self, name: str) -> t.Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(
                f"hparams has no {name!r}; saved names: {', '.join(self) or 'none'}"
            ) from err

    def __setattr__(self, name: str, value: t.Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


def get_toggling(owner: t.Any) -> t.Any:
    """The ``toggling`` plugin instance cached on ``owner`` (created on first use).

    The instance named in ``plugins=`` is reused; otherwise one is created and attached to the
    owner's Fabric, so that ``on_exception`` restores flags a paired toggle left changed.
    """
    plugin = getattr(owner, "_toggling", None)
    if plugin is None:
        fabric = getattr(owner, "fabric", None)
        plugin = fabric.get_plugin("toggling") if fabric is not None else None
        if plugin is None:
            try:
                plugin = registry().create("subscriber", "toggling")
            except PluginNotFoundError as err:
                raise RuntimeError(
                    "toggle_optimizer(), untoggle_optimizer() and optimizer.toggle_model() need "
                    f"the optimizer-toggling plugin: pip install loopkit-toggling ({err})"
                ) from err
            if fabric is not None:
                fabric.add_plugin(plugin)
        owner._toggling = plugin
    return plugin


class LoopOptimizer(FabricOptimizer):
    """What ``self.optimizers()`` returns: the Fabric-wrapped optimizer, plus ``toggle_model``.

    The trainer turns each optimizer Fabric wrapped into an instance of a subclass of this class
    (the same object: only its class changes, and this class adds no state), so the wrapper stays
    the one ``fabric.setup`` made, with its shared attributes and its ``step``.
    """

    @contextlib.contextmanager
    def toggle_model(self, sync_grad: bool = True) -> c.Iterator[None]:
        """Train only this optimizer's parameters in the block; ``sync_grad=False`` skips the
        gradient synchronisation of distributed training (accumulation). Needs the ``toggling``
        plugin (loopkit-toggling)."""
        trainer = self._fabric._trainer
        plugin = get_toggling(trainer)
        with plugin.toggled(
            trainer.lightning_module, self, trainer.optimizers, sync_grad=sync_grad,
            fabric=trainer.fabric,
        ):  # fmt: skip
            yield


_loop_classes: dict[type, type] = {}


def as_loop_optimizer(
    wrapped: FabricOptimizer, progress: t.Any, counted: bool = True
) -> LoopOptimizer:
    """Make ``wrapped`` (from ``fabric.setup``) a :class:`LoopOptimizer`; with ``counted``, each
    of its steps sets ``progress.stepped`` (``global_step`` counts batches on which an optimizer
    stepped).

    ``progress`` is the trainer's :class:`~loopkit.loop.Progress`. The counting step replaces
    the wrapper's ``step`` on this instance only (``FabricOptimizer.step`` is settable for that).
    """
    cls = type(wrapped)
    if not isinstance(wrapped, LoopOptimizer):
        made = _loop_classes.get(cls)
        if made is None:
            made = type(f"Loop{cls.__name__}", (LoopOptimizer, cls), {})
            _loop_classes[cls] = made
        # object.__setattr__: nothing may reach the user's optimizer, whose attributes the
        # wrapper shares.
        object.__setattr__(wrapped, "__class__", made)
    if not counted:
        return t.cast(LoopOptimizer, wrapped)
    fabric_step = wrapped.step

    def counted_step(closure: c.Callable[[], t.Any] | None = None, **kwargs: t.Any) -> t.Any:
        out = fabric_step(closure, **kwargs)
        progress.stepped = True
        return out

    wrapped.step = counted_step
    return t.cast(LoopOptimizer, wrapped)


class LoopModule(nn.Module):
    """A module the Trainer can fit: the LightningModule shape of the reference documents.

    Override ``training_step`` and ``configure_optimizers`` (and ``validation_step`` to
    validate). Set ``self.automatic_optimization = False`` to drive optimizers yourself.
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._automatic_optimization = True
        self._trainer: Trainer | None = None
        self._hparams = AttributeDict()
        self._warned_no_trainer = False

    # -- what the user overrides ------------------------------------------------------------

    def training_step(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """One training batch: return the loss (a tensor or a dict with ``"loss"``), or None
        to skip the batch. In manual optimization, step the optimizers here yourself."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define training_step(self, batch, batch_idx)"
        )

    def validation_step(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """One validation batch (optional: without it the trainer does not validate)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define validation_step(self, batch, batch_idx)"
        )

    def configure_optimizers(self) -> t.Any:
        """Return the optimizers (and schedulers) to train with; see :mod:`loopkit.optim`."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define configure_optimizers(self); return an "
            "optimizer such as torch.optim.Adam(self.parameters())"
        )

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: t.Any,
        optimizer_closure: c.Callable[[], t.Any] | None = None,
    ) -> None:
        """Step ``optimizer``; the closure runs training_step, zero_grad and backward.

        Overrides may use this signature, ``(epoch, batch_idx, optimizer, optimizer_idx,
        optimizer_closure, on_tpu, using_native_amp, using_lbfgs)``, or the earliest
        ``(current_epoch, batch_nb, optimizer, optimizer_i, second_order_closure=None)``.
        """
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: t.Any) -> None:
        """Clear ``optimizer``'s gradients (automatic optimization calls this)."""
        optimizer.zero_grad()

    def configure_gradient_clipping(
        self,
        optimizer: t.Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip gradients before a step in automatic optimization (the Trainer's settings)."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- attributes -------------------------------------------------------------------------

    @property
    def automatic_optimization(self) -> bool:
        """False: the trainer calls ``training_step`` only; the user steps the optimizers."""
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    @property
    def trainer(self) -> Trainer:
        """The trainer running this module (an error when it is not attached to one)."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError(
                f"{type(self).__name__} is not attached to a Trainer; self.trainer is available "
                "while trainer.fit() or trainer.validate() runs it"
            )
        return trainer

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        self._trainer = trainer

    def __getstate__(self) -> dict[str, t.Any]:
        # A copy (copy.deepcopy, pickle) is the module without its trainer, as in Lightning: an
        # EMA or teacher copy must not drag a second Trainer (its Fabric, loggers) along.
        state = self.__dict__.copy()
        state["_trainer"] = None
        return state

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def device(self) -> torch.device:
        """The device the module's parameters are on (the CPU when it has none)."""
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def hparams(self) -> AttributeDict:
        """What :meth:`save_hyperparameters` saved, readable as attributes."""
        return self._hparams

    def save_hyperparameters(
        self, *args: t.Any, ignore: str | c.Sequence[str] | None = None, logger: bool = True
    ) -> None:
        """Save the caller's ``__init__`` arguments (or the named ones, or a dict) to
        ``self.hparams``; loggers receive them when fitting starts."""
        if len(args) == 1 and isinstance(args[0], dict):
            self._hparams.update(args[0])
            return
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        if caller is None:  # pragma: no cover - CPython always has frames
            raise RuntimeError("save_hyperparameters() cannot read its caller's arguments")
        try:
            info = inspect.getargvalues(caller)
            values: dict[str, t.Any] = {}
            for name in info.args:
                if name != "self" and name != "__class__":
                    values[name] = info.locals[name]
            if info.varargs and info.locals.get(info.varargs):
                values[info.varargs] = info.locals[info.varargs]
            if info.keywords:
                values.update(info.locals.get(info.keywords, {}))
        finally:
            del frame, caller
        if args:
            wanted = [a for a in args if isinstance(a, str)]
            missing = [a for a in wanted if a not in values]
            if missing:
                raise ValueError(
                    f"save_hyperparameters({', '.join(map(repr, wanted))}): "
                    f"{', '.join(map(repr, missing))} not among the caller's arguments "
                    f"({', '.join(values) or 'none'})"
                )
            values = {a: values[a] for a in wanted}
        ignored = [ignore] if isinstance(ignore, str) else list(ignore or ())
        for name in ignored:
            values.pop(name, None)
        self._hparams.update(values)

    # -- optimizers -------------------------------------------------------------------------

    def optimizers(self, use_pl_optimizer: bool = True) -> t.Any:
        """The optimizers from ``configure_optimizers``: one, or a list, wrapped by the trainer
        (``.optimizer`` is your own optimizer)."""
        opts: list[t.Any] = list(self.trainer.optimizers)
        if not use_pl_optimizer:
            opts = [o.optimizer for o in opts]
        if len(opts) == 1:
            return opts[0]
        return opts

    def lr_schedulers(self) -> t.Any:
        """The schedulers from ``configure_optimizers``: None, one, or a list."""
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        if len(configs) == 1:
            return configs[0].scheduler
        return [c.scheduler for c in configs]

    def manual_backward(self, loss: torch.Tensor, *args: t.Any, **kwargs: t.Any) -> None:
        """``loss.backward()`` through the trainer's precision and strategy (manual mode)."""
        trainer = self.trainer
        if self._automatic_optimization:
            raise RuntimeError(
                "manual_backward() is for manual optimization, but "
                f"{type(self).__name__}.automatic_optimization is True: the trainer runs "
                "backward itself. Set self.automatic_optimization = False in __init__ to "
                "step the optimizers yourself, or return the loss from training_step"
            )
        trainer.fabric.backward(loss, *args, model=trainer._wrapped, **kwargs)

    def clip_gradients(
        self,
        optimizer: t.Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip ``optimizer``'s gradients by norm (default) or by value."""
        if gradient_clip_val is None or gradient_clip_val == 0:
            return
        algorithm = gradient_clip_algorithm or "norm"
        fabric = self.trainer.fabric
        if algorithm == "norm":
            fabric.clip_gradients(
                self, optimizer, max_norm=float(gradient_clip_val), error_if_nonfinite=False
            )
        elif algorithm == "value":
            fabric.clip_gradients(self, optimizer, clip_val=float(gradient_clip_val))
        else:
            raise ValueError(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r}; use 'norm' or 'value'"
            )

    def toggle_optimizer(self, optimizer: t.Any) -> None:
        """Freeze the parameters that only the other optimizers train (loopkit-toggling)."""
        trainer = self.trainer
        get_toggling(trainer).toggle_optimizer(self, optimizer, trainer.optimizers)

    def untoggle_optimizer(self, optimizer: t.Any) -> None:
        """Undo :meth:`toggle_optimizer` (loopkit-toggling)."""
        get_toggling(self.trainer).untoggle_optimizer(self, optimizer)

    # -- logging ----------------------------------------------------------------------------

    def log(
        self,
        name: str,
        value: t.Any,
        prog_bar: bool = False,
        logger: bool = True,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | c.Callable[..., t.Any] = "mean",
        sync_dist: bool = False,
        batch_size: int | None = None,
        **kwargs: t.Any,
    ) -> None:
        """Record a metric. In training_step it is written every ``log_every_n_steps`` steps
        (``on_step``); in validation_step it is averaged over the epoch (``on_epoch``)."""
        trainer = self._trainer
        if trainer is None:
            if not self._warned_no_trainer:
                self._warned_no_trainer = True
                warnings.warn(
                    f"{type(self).__name__}.log({name!r}) was called outside a Trainer run; "
                    "the value is dropped",
                    UserWarning,
                    stacklevel=2,
                )
            return
        trainer._metrics.log(
            name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, batch_size
        )

    def log_dict(
        self,
        dictionary: c.Mapping[str, t.Any],
        prog_bar: bool = False,
        logger: bool = True,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | c.Callable[..., t.Any] = "mean",
        sync_dist: bool = False,
        batch_size: int | None = None,
        **kwargs: t.Any,
    ) -> None:
        """:meth:`log` each item of ``dictionary`` with the same options."""
        for name, value in dictionary.items():
            self.log(
                name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, batch_size
            )

    def print(self, *args: t.Any, **kwargs: t.Any) -> None:
        """``print`` on the global-zero process only."""
        trainer = self._trainer
        if trainer is None or trainer.is_global_zero:
            print(*args, **kwargs)

    # -- hooks (defaults do nothing; the bus only dispatches to overrides) ------------------

    @default_hook
    def on_fit_start(self) -> None: ...

    @default_hook
    def on_fit_end(self) -> None: ...

    @default_hook
    def on_train_start(self) -> None: ...

    @default_hook
    def on_train_end(self) -> None: ...

    @default_hook
    def on_train_epoch_start(self) -> None: ...

    @default_hook
    def on_train_epoch_end(self) -> None: ...

    @default_hook
    def on_train_batch_start(self, batch: t.Any, batch_idx: int) -> t.Any: ...

    @default_hook
    def on_train_batch_end(self, outputs: t.Any, batch: t.Any, batch_idx: int) -> None: ...

    @default_hook
    def on_validation_start(self) -> None: ...

    @default_hook
    def on_validation_end(self) -> None: ...

    @default_hook
    def on_validation_epoch_start(self) -> None: ...

    @default_hook
    def on_validation_epoch_end(self) -> None: ...

    @default_hook
    def on_validation_batch_start(
        self, batch: t.Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    @default_hook
    def on_validation_batch_end(
        self, outputs: t.Any, batch: t.Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    @default_hook
    def on_before_zero_grad(self, optimizer: t.Any) -> None: ...

    @default_hook
    def on_before_backward(self, loss: torch.Tensor) -> None: ...

    @default_hook
    def on_after_backward(self) -> None: ...

    @default_hook
    def on_before_optimizer_step(self, optimizer: t.Any) -> None: ...

    @default_hook
    def on_save_checkpoint(self, checkpoint: dict[str, t.Any]) -> None: ...

    @default_hook
    def on_load_checkpoint(self, checkpoint: dict[str, t.Any]) -> None: ...
