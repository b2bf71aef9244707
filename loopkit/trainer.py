"""``Trainer``: a Lightning-style trainer assembled from loopkit's parts.

The parts: a :class:`~loopkit.Fabric` (devices, precision, strategy, the hook bus, loggers), the
:class:`~loopkit.loop.FitLoop` (epochs, batches, validation, stop conditions), the
``configure_optimizers`` parser (:mod:`loopkit.optim`) and plugins found by name (accumulation,
toggling, LR scheduling, loggers, progress bar). This module adds only what ties them together:
the optimization of one batch (automatic or manual) and the bookkeeping of ``self.log``.

It must never import a plugin package: plugins are created through the registry, by name.
"""

from __future__ import annotations

import collections.abc as c
import functools
import inspect
import math
import os
import typing as t
import warnings

import torch
from torch import nn

from loopkit.fabric import Fabric
from loopkit.hooks import HOOKS
from loopkit.loop import FitLoop, Progress, run_validation
from loopkit.module import LoopModule, LoopOptimizer, as_loop_optimizer, get_toggling
from loopkit.optim import LRSchedulerConfig, parse_configure_optimizers
from loopkit.plugins import PluginNotFoundError, registry
from loopkit.trainer_state import Checkpointing
from loopkit.wrappers import FabricModule

__all__ = ["Trainer"]

#: Receivers the trainer itself subscribes run first (setting up) or last (collecting).
_FIRST, _LAST = 10_000, -10_000


#: ``_forward_backward``'s default for ``out``: run training_step.
_RUN: t.Any = object()


class _SkipBatch(Exception):
    """Raised inside the closure when training_step returned None: abandons the step."""


class Trainer:
    """Fit a :class:`~loopkit.LoopModule`: the loop, optimization, validation and logging.

    Arguments keep Lightning's names. ``accelerator``, ``strategy``, ``devices``, ``num_nodes``,
    ``precision`` and ``plugins`` go to the underlying :class:`~loopkit.Fabric` (plugins by
    name). ``logger`` is True (the ``tensorboard`` logger plugin when installed, else none),
    False/None, a logger object, a logger plugin name, or a list of those.
    """

    def __init__(
        self,
        *,
        accelerator: t.Any = "auto",
        strategy: t.Any = "auto",
        devices: t.Any = "auto",
        num_nodes: int = 1,
        precision: t.Any = None,
        plugins: t.Any = None,
        callbacks: t.Any = None,
        logger: t.Any = True,
        max_epochs: int | None = None,
        max_steps: int = -1,
        accumulate_grad_batches: int | dict[int, int] = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        log_every_n_steps: int = 50,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        enable_model_summary: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        deterministic: bool | str | None = None,
    ) -> None:
        if (max_epochs is None or max_epochs == -1) and (max_steps is None or max_steps == -1):
            raise ValueError(
                "Trainer() got neither max_epochs nor max_steps, so training would never end: "
                "pass max_epochs=N or max_steps=N (max_epochs=-1 trains until should_stop)"
            )
        for key, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
            if value is not None and (not isinstance(value, int) or value < -1):
                raise ValueError(f"{key}={value!r}: pass a non-negative int (or -1 for no limit)")
        _check_accumulate(accumulate_grad_batches)
        if gradient_clip_algorithm not in (None, "norm", "value"):
            raise ValueError(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r}; use 'norm' or 'value'"
            )
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps={log_every_n_steps!r}: pass a positive int")
        _check_limit("limit_train_batches", limit_train_batches)
        _check_limit("limit_val_batches", limit_val_batches)
        if check_val_every_n_epoch is not None and (
            not isinstance(check_val_every_n_epoch, int) or check_val_every_n_epoch < 1
        ):
            raise ValueError(
                f"check_val_every_n_epoch={check_val_every_n_epoch!r}: pass a positive int or None"
            )
        self.max_epochs = max_epochs
        self.max_steps = -1 if max_steps is None else max_steps
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.log_every_n_steps = log_every_n_steps
        self.enable_progress_bar = enable_progress_bar
        self.enable_checkpointing = enable_checkpointing
        self.enable_model_summary = enable_model_summary
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir else os.getcwd()
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")

        callbacks = _as_list(callbacks)
        if enable_checkpointing:
            # Seam for the checkpoint task: the callback joins when loopkit provides it.
            from loopkit import callbacks as _callbacks

            checkpoint_cls = getattr(_callbacks, "ModelCheckpoint", None)
            if checkpoint_cls is not None and not any(
                isinstance(cb, checkpoint_cls) for cb in callbacks
            ):
                callbacks.append(checkpoint_cls())
        self.callbacks: list[t.Any] = callbacks
        self.fabric = Fabric(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            plugins=plugins,
            callbacks=callbacks,
            loggers=_resolve_loggers(logger),
        )
        self.fabric._trainer = self
        bus = self.fabric.bus
        bus.add_fired(HOOKS)  # the trainer fires every declared hook: validate receivers now
        if enable_progress_bar and "progress_bar" in registry():
            self.fabric.add_plugin(registry().create("subscriber", "progress_bar"))

        #: Loop counters (epoch, global_step, batch index): what a checkpoint saves and restores.
        self.progress = Progress()
        self.optimizers: list[LoopOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.num_training_batches: float = math.inf
        self.num_val_batches: list[float] = []
        self.training = False
        self.validating = False
        self.interrupted = False
        self.loop: FitLoop | None = None
        self._module: LoopModule | None = None
        self._wrapped: FabricModule | None = None
        self._setup_modules: dict[int, FabricModule] = {}
        self._accumulation: t.Any = None
        self._schedulers: t.Any = None
        self._toggling: t.Any = None
        self._metrics = _Metrics(self)
        self._metrics.connect(bus)
        #: Checkpoints: save_checkpoint(), fit(ckpt_path=...), where the loop stands.
        self._checkpointing = Checkpointing(self)

    # -- what plugins and modules read --------------------------------------------------------

    @property
    def lightning_module(self) -> LoopModule:
        """The module being fitted (Lightning's name)."""
        if self._module is None:
            raise RuntimeError("no module is attached: call trainer.fit(module, ...) first")
        return self._module

    @property
    def module(self) -> LoopModule:
        """The module being fitted."""
        return self.lightning_module

    @property
    def model(self) -> FabricModule | None:
        """The module as Fabric set it up (what forward runs through)."""
        return self._wrapped

    @property
    def current_epoch(self) -> int:
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        """Batches on which an optimizer stepped (once per batch, however many stepped)."""
        return self.progress.global_step

    @property
    def is_last_batch(self) -> bool:
        return self.progress.is_last_batch

    @property
    def should_stop(self) -> bool:
        return self.progress.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.progress.should_stop = bool(value)

    @property
    def estimated_stepping_batches(self) -> float:
        """How many optimizer steps ``fit`` will take (``max_steps`` when set)."""
        if self.max_steps != -1:
            return self.max_steps
        n, epochs = self.num_training_batches, self.max_epochs
        if n == math.inf or epochs is None or epochs == -1:
            return math.inf
        acc = self.accumulate_grad_batches
        if isinstance(acc, int):
            return math.ceil(n / acc) * epochs
        return sum(math.ceil(n / _accumulation_at(acc, e)) for e in range(epochs))

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Latest value of every logged metric, epoch-reduced ones included (name -> tensor)."""
        return self._metrics.callback

    @property
    def logged_metrics(self) -> dict[str, t.Any]:
        """What was written to the loggers, by the name it was written under."""
        return self._metrics.logged

    @property
    def progress_bar_metrics(self) -> dict[str, torch.Tensor]:
        """What was logged with ``prog_bar=True``."""
        return self._metrics.pbar

    @property
    def loggers(self) -> list[t.Any]:
        return self.fabric.loggers

    @property
    def logger(self) -> t.Any:
        return self.fabric.logger

    @property
    def log_dir(self) -> str:
        """The first logger's folder, else ``default_root_dir``."""
        folder = getattr(self.logger, "log_dir", None)
        return os.fspath(folder) if folder is not None else self.default_root_dir

    @property
    def strategy(self) -> t.Any:
        return self.fabric.strategy

    @property
    def precision(self) -> t.Any:
        return self.fabric.precision

    @property
    def global_rank(self) -> int:
        return self.fabric.global_rank

    @property
    def local_rank(self) -> int:
        return self.fabric.local_rank

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    @property
    def checkpoint_callbacks(self) -> list[t.Any]:
        """The ``ModelCheckpoint`` callbacks, in order."""
        return self._checkpointing.checkpoint_callbacks()

    @property
    def checkpoint_callback(self) -> t.Any:
        """The first ``ModelCheckpoint`` callback (None when there is none)."""
        found = self.checkpoint_callbacks
        return found[0] if found else None

    def save_checkpoint(
        self,
        filepath: str | os.PathLike[str],
        weights_only: bool = False,
        storage_options: t.Any = None,
    ) -> None:
        """Write a checkpoint of everything training changes (``weights_only``: the module's
        weights only) to ``filepath``, atomically; see ``docs/checkpoints.md``."""
        if storage_options is not None:
            raise TypeError(
                "save_checkpoint(storage_options=...) is not supported; pass a checkpoint_io "
                "plugin in Trainer(plugins=[...]) to write elsewhere"
            )
        self._checkpointing.save(filepath, weights_only)

    # -- entry points -------------------------------------------------------------------------

    def fit(
        self,
        model: LoopModule,
        train_dataloaders: t.Any = None,
        val_dataloaders: t.Any = None,
        datamodule: t.Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool = True,
    ) -> None:
        """Train ``model`` on ``train_dataloaders``, validating on ``val_dataloaders``.

        ``ckpt_path`` (a path, or ``"last"``) resumes from a checkpoint; it is loaded with
        ``weights_only=True`` unless you pass False for a file you trust.
        """
        module = _check_module(model, "fit")
        train = _pick_loader(train_dataloaders, datamodule, module, "train_dataloader")
        if train is None:
            raise ValueError(
                f"fit() needs training data: pass train_dataloaders=, a datamodule, or define "
                f"{type(module).__name__}.train_dataloader()"
            )
        val = _pick_loader(val_dataloaders, datamodule, module, "val_dataloader")
        self._launch(self._fit, module, train, val, ckpt_path, weights_only)

    def validate(
        self,
        model: LoopModule | None = None,
        dataloaders: t.Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: t.Any = None,
    ) -> list[dict[str, float]]:
        """Run one validation pass; return ``[{metric: value}]`` of what it logged."""
        module = _check_module(model if model is not None else self._module, "validate")
        if ckpt_path is not None:  # a path, "last" or "best": the module's weights only
            self._checkpointing.load_weights(module, ckpt_path, weights_only=True)
        loaders = _pick_loader(dataloaders, datamodule, module, "val_dataloader")
        if loaders is None:
            raise ValueError(
                "validate() needs data: pass dataloaders=, a datamodule, or define "
                f"{type(module).__name__}.val_dataloader()"
            )
        result: list[dict[str, float]] = self._launch(self._validate_only, module, loaders)
        return result

    # -- fit -------------------------------------------------------------------------------

    def _launch(self, fn: c.Callable[..., t.Any], *args: t.Any) -> t.Any:
        if self.fabric._launched:
            return fn(*args)
        return self.fabric.launch(lambda _fabric: fn(*args))

    def _attach(self, module: LoopModule) -> None:
        """Set ``module`` up with Fabric, once per trainer (which also connects its hooks)."""
        self._module = module
        module.trainer = self
        wrapped = self._setup_modules.get(id(module))
        if wrapped is None:
            wrapped = self.fabric.setup_module(module)
            self._setup_modules[id(module)] = wrapped
        self._wrapped = wrapped
        self._metrics.reset_run()

    def _fit(
        self,
        module: LoopModule,
        train: t.Any,
        val: t.Any,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool = True,
    ) -> None:
        fabric = self.fabric
        self._attach(module)
        status = "failed"
        clip_subscription = None
        try:
            optimizers, self.lr_scheduler_configs = parse_configure_optimizers(
                module.configure_optimizers()
            )
            wrapped = _as_list(fabric.setup_optimizers(*optimizers)) if optimizers else []
            # Under the default optimizer_step the trainer's closure counts the step itself.
            counted = not (
                module.automatic_optimization and _optimizer_step_style(module)[0] is _DEFAULT
            )
            self.optimizers = [as_loop_optimizer(o, self.progress, counted) for o in wrapped]
            self._check_options(module)
            clip_subscription = self._connect_clipping(module)
            train_loader = fabric.setup_dataloaders(train)
            self.num_training_batches = _limit(_length(train_loader), self.limit_train_batches)
            if _length(train_loader) == 0:
                raise ValueError(
                    f"fit(): the training data ({type(train).__name__}) has no batches (length "
                    "0); check that its dataset is not empty and that batch_size with "
                    "drop_last=True does not drop every sample"
                )
            val_loaders = self._setup_val(module, val)
            self.loop = FitLoop(
                fabric.bus.call,
                self.progress,
                trainer=self,
                module=module,
                max_epochs=self.max_epochs,
                max_steps=self.max_steps,
                **self._val_schedule(),
            )
            step = (
                _AutomaticStep(self).entry()
                if module.automatic_optimization
                else self._manual_step()
            )
            validate = (
                functools.partial(self._run_validation, module, val_loaders)
                if val_loaders
                else None
            )
            for lg in self.loggers:
                if callable(getattr(lg, "log_hyperparams", None)):
                    lg.log_hyperparams(dict(module.hparams))
            if self.enable_model_summary and self.is_global_zero:
                print(_summary(module))
            self.progress.should_stop = False
            self.training = True
            module.train()
            data = self._checkpointing.begin_fit(train_loader, step, ckpt_path, weights_only)
            fabric.call("on_fit_start", trainer=self, module=module)
            self.loop.run(data, step, validate, self.num_training_batches)
            fabric.call("on_fit_end", trainer=self, module=module)
            status = "success"
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                status = "interrupted"
                self.interrupted = True
            fabric.call("on_exception", trainer=self, module=module, exception=exc)
            raise
        finally:
            self.training = False
            if clip_subscription is not None:
                clip_subscription.disconnect()
            for lg in self.loggers:
                if callable(getattr(lg, "finalize", None)):
                    lg.finalize(status)

    def _check_options(self, module: LoopModule) -> None:
        """Errors for options that do not fit the module; plugins the options need."""
        acc = self.accumulate_grad_batches
        automatic = module.automatic_optimization
        if acc != 1:
            if not automatic:
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={acc!r}) applies to automatic "
                    f"optimization, but {type(module).__name__}.automatic_optimization is False. "
                    "Accumulate by hand: scale the loss by 1/N, call manual_backward every batch "
                    "and opt.step(); opt.zero_grad() when (batch_idx + 1) % N == 0"
                )
            if self._accumulation is None:
                self._accumulation = self.fabric.add_plugin(
                    _create("accumulation", "accumulate_grad_batches", accumulate_grad_batches=acc)
                )
        if self.gradient_clip_val and not automatic:
            raise ValueError(
                f"Trainer(gradient_clip_val={self.gradient_clip_val!r}) applies to automatic "
                f"optimization, but {type(module).__name__}.automatic_optimization is False; "
                "call self.clip_gradients(opt, gradient_clip_val=..., gradient_clip_algorithm="
                "...) in training_step before opt.step()"
            )
        if self.lr_scheduler_configs:
            if automatic:
                if self._schedulers is None:
                    self._schedulers = self.fabric.add_plugin(
                        _create("schedulers", "returning schedulers from configure_optimizers")
                    )
            elif any(_has_settings(c) for c in self.lr_scheduler_configs):
                warnings.warn(
                    "manual optimization ignores scheduler settings (interval, frequency, "
                    "monitor...): step your schedulers in training_step with "
                    "self.lr_schedulers()",
                    UserWarning,
                    stacklevel=4,
                )

    def _connect_clipping(self, module: LoopModule) -> t.Any:
        clipping = type(module).configure_gradient_clipping
        overridden = clipping is not LoopModule.configure_gradient_clipping
        if not module.automatic_optimization or not (self.gradient_clip_val or overridden):
            return None
        by_optimizer = {id(o.optimizer): o for o in self.optimizers}

        def clip(optimizer: torch.optim.Optimizer) -> None:
            # After every other receiver of on_before_optimizer_step: gradients are unscaled.
            module.configure_gradient_clipping(
                by_optimizer.get(id(optimizer), optimizer),
                self.gradient_clip_val,
                self.gradient_clip_algorithm,
            )

        return self.fabric.bus.connect(clip, "on_before_optimizer_step", priority=_LAST)

    def _val_schedule(self) -> dict[str, t.Any]:
        interval, every_epoch = self.val_check_interval, self.check_val_every_n_epoch
        n = self.num_training_batches
        if interval is None or (isinstance(interval, float) and interval == 1.0):
            return {"val_every_n_batches": None, "val_every_n_epochs": every_epoch}
        if isinstance(interval, float):
            if not 0.0 < interval <= 1.0:
                raise ValueError(
                    f"val_check_interval={interval!r}: a float is a fraction of the epoch in "
                    "(0, 1]; pass an int for a number of batches"
                )
            if n == math.inf:
                raise ValueError(
                    f"val_check_interval={interval!r} is a fraction of an epoch, but the training "
                    "data has no length; pass an int number of batches"
                )
            every = max(1, int(n * interval))
            return {"val_every_n_batches": every, "val_every_n_epochs": every_epoch}
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"val_check_interval={interval!r}: pass a positive int or a float")
        if every_epoch is not None and interval > n:
            raise ValueError(
                f"val_check_interval={interval} is more than the {int(n)} training batches of an "
                "epoch; lower it, or pass check_val_every_n_epoch=None to count batches across "
                "epochs"
            )
        return {"val_every_n_batches": interval, "val_every_n_epochs": every_epoch}

    def _manual_step(self) -> c.Callable[[t.Any, int], t.Any]:
        return self._step_caller("training_step")

    def _step_caller(self, name: str) -> c.Callable[..., t.Any]:
        """A function calling ``module.<name>(*args)``, through forward when something needs it.

        Running the step through the set-up module's forward lets the precision's autocast, the
        strategy's parallel wrapper (DDP) and plugins' forward-phase contexts see it. When none
        is active the method is called directly (decided per call: plugins can join later).
        """
        module, fabric = t.cast(LoopModule, self._module), self.fabric
        method = getattr(module, name)
        redirect = self._redirect(name)
        direct = self._wrapped is not None and self._wrapped.forward_module is module

        def call_step(*args: t.Any) -> t.Any:
            if direct and not fabric._forward_active:
                return method(*args)
            return redirect(*args)

        return call_step

    def _redirect(self, name: str) -> c.Callable[..., t.Any]:
        """A function running ``module.<name>(*args)`` as the set-up module's forward."""
        module, wrapped = t.cast(LoopModule, self._module), self._wrapped
        assert wrapped is not None
        method = getattr(module, name)

        def redirected(*args: t.Any) -> t.Any:
            def forward(*a: t.Any, **kw: t.Any) -> t.Any:
                # Unpatch first: the step itself may call self(...) and mean the real forward.
                module.__dict__.pop("forward", None)
                return method(*a, **kw)

            module.__dict__["forward"] = forward
            try:
                return wrapped(*args)
            finally:
                module.__dict__.pop("forward", None)

        return redirected

    # -- validation ----------------------------------------------------------------------------

    def _setup_val(self, module: LoopModule, val: t.Any) -> list[t.Any]:
        if val is None or type(module).validation_step is LoopModule.validation_step:
            self.num_val_batches = []
            return []
        loaders = list(val) if _is_loader_list(val) else [val]
        wrapped = [self.fabric.setup_dataloaders(v) for v in loaders]
        self.num_val_batches = [_limit(_length(v), self.limit_val_batches) for v in wrapped]
        if all(n == 0 for n in self.num_val_batches):
            return []
        return wrapped

    def _run_validation(self, module: LoopModule, loaders: list[t.Any]) -> None:
        was_training = module.training
        module.eval()
        self.validating = True
        step = self._step_caller("validation_step")
        several = len(loaders) > 1

        def validation_step(batch: t.Any, batch_idx: int, dataloader_idx: int) -> t.Any:
            if several:
                return step(batch, batch_idx, dataloader_idx)
            return step(batch, batch_idx)

        try:
            with torch.no_grad():
                run_validation(
                    self.fabric.bus.call,
                    loaders,
                    validation_step,
                    self.num_val_batches,
                    trainer=self,
                    module=module,
                )
        finally:
            self.validating = False
            module.train(was_training)

    def _validate_only(self, module: LoopModule, loaders: t.Any) -> list[dict[str, float]]:
        self._attach(module)
        if type(module).validation_step is LoopModule.validation_step:
            raise ValueError(
                f"validate() needs {type(module).__name__}.validation_step(batch, batch_idx)"
            )
        val_loaders = self._setup_val(module, loaders)
        collected: dict[str, torch.Tensor] = {}
        self._metrics.collect = collected
        try:
            self._run_validation(module, val_loaders)
        finally:
            self._metrics.collect = None
        return [{k: float(v.item()) for k, v in collected.items()}]


# -- automatic optimization -------------------------------------------------------------------

_DEFAULT, _V2, _V1, _V0 = "default", "v2", "v1", "v0"


def _optimizer_step_style(module: LoopModule) -> tuple[str, int]:
    """Which of the documented ``optimizer_step`` signatures the module's override uses.

    Returns the style and how many positional arguments the override takes. Decided from the
    parameter names, once per fit.
    """
    fn = type(module).optimizer_step
    if fn is LoopModule.optimizer_step:
        return _DEFAULT, 4
    params = list(inspect.signature(module.optimizer_step).parameters.values())
    names = {p.name for p in params}
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        count = 8
    else:
        count = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if "second_order_closure" in names or "optimizer_i" in names:
        return _V0, min(count, 5)
    if "optimizer_idx" in names or count >= 5:
        return _V1, min(count, 8)
    if count < 3:
        raise TypeError(
            f"{type(module).__name__}.optimizer_step{inspect.signature(module.optimizer_step)} "
            "does not match a supported signature: (epoch, batch_idx, optimizer, "
            "optimizer_closure), (epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure, "
            "on_tpu, using_native_amp, using_lbfgs) or (current_epoch, batch_nb, optimizer, "
            "optimizer_i, second_order_closure=None)"
        )
    return _V2, count


def _takes_optimizer_idx(fn: c.Callable[..., t.Any]) -> tuple[bool, bool]:
    """(accepts an optimizer index, requires one) for a ``training_step``."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True, False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if "optimizer_idx" in {p.name for p in params} or len(positional) >= 3:
        third = positional[2] if len(positional) >= 3 else None
        return True, third is not None and third.default is third.empty
    return False, False


class _AutomaticStep:
    """One batch of automatic optimization: per optimizer, training_step → zero_grad → backward
    → step, run as a closure passed to ``optimizer.step(closure=...)``.

    Gradients are zeroed before the first backward of an accumulation window (every batch when
    nothing accumulates), so an accumulating batch (``should_optimizer_step`` answered False)
    adds its gradients to the window's.
    """

    def __init__(self, trainer: Trainer) -> None:
        module = trainer.lightning_module
        self.trainer, self.module, self.fabric = trainer, module, trainer.fabric
        self.bus, self.progress = trainer.fabric.bus, trainer.progress
        self.wrapped = trainer._wrapped
        self.optimizers = list(trainer.optimizers)
        self.training_step = module.training_step
        self.redirect = trainer._redirect("training_step")
        self.direct = self.wrapped is not None and self.wrapped.forward_module is module
        self.style, self.nargs = _optimizer_step_style(module)
        self.step_hook: c.Callable[..., t.Any] = module.optimizer_step
        accepts, requires = _takes_optimizer_idx(module.training_step)
        if len(self.optimizers) > 1 and not accepts:
            raise TypeError(
                f"{type(module).__name__}.configure_optimizers() returned "
                f"{len(self.optimizers)} optimizers, so automatic optimization calls "
                "training_step(batch, batch_idx, optimizer_idx) once per optimizer, but "
                f"{type(module).__name__}.training_step{inspect.signature(module.training_step)} "
                "takes no optimizer_idx. Add that parameter, or set "
                "self.automatic_optimization = False and step the optimizers yourself"
            )
        self.pass_idx = len(self.optimizers) > 1 or requires
        overridden = type(module).optimizer_zero_grad is not LoopModule.optimizer_zero_grad
        self.zero_grad_hook = module.optimizer_zero_grad if overridden else None
        self.accumulated = [False] * len(self.optimizers)
        # The earliest API (reference 002) predates toggling: its schedules let gradients
        # accumulate across optimizers between steps, which freezing parameters would change.
        toggles = len(self.optimizers) > 1 and self.style is not _V0
        self.toggling = get_toggling(trainer) if toggles and "toggling" in registry() else None
        self.output: t.Any = None
        self.warned_none = False
        # Receivers of the query are known at fit start (the accumulation plugin attaches before).
        self.query = bool(self.bus.receivers("should_optimizer_step"))
        #: The common case (one optimizer, the default optimizer_step, nothing to ask) has its
        #: own lean path: this is the per-batch cost of the Trainer over a plain loop.
        self.simple = (
            len(self.optimizers) == 1
            and self.style is _DEFAULT
            and self.zero_grad_hook is None
            and not self.pass_idx
            and not self.query
        )
        self.opt = self.optimizers[0] if self.optimizers else None

    def entry(self) -> c.Callable[[t.Any, int], t.Any]:
        """The per-batch callable for the loop."""
        return self._simple if self.simple else self

    def _simple(self, batch: t.Any, batch_idx: int) -> t.Any:
        self.output = None
        try:  # noqa: SIM105 (a try is free; contextlib.suppress() is an object per batch)
            t.cast(LoopOptimizer, self.opt).step(
                closure=functools.partial(self._closure, batch, batch_idx)
            )
        except _SkipBatch:
            pass
        out, self.output = self.output, None  # the graph is not kept until the next batch
        return _batch_output(out)

    def _closure(self, batch: t.Any, batch_idx: int) -> t.Any:
        # _forward_backward(batch, batch_idx, 0, self.opt, True, True, True), inlined for a
        # finite scalar loss tensor; anything else takes the general path.
        if self.direct and not self.fabric._forward_active:
            out = self.training_step(batch, batch_idx)
        else:
            out = self.redirect(batch, batch_idx)
        self.output = out
        if (
            type(out) is not torch.Tensor
            or not out.requires_grad
            or out.numel() != 1
            or not math.isfinite(out.item())
        ):
            return self._forward_backward(batch, batch_idx, 0, self.opt, True, True, True, out)
        t.cast(LoopOptimizer, self.opt).zero_grad()
        self.fabric.backward(out, model=self.wrapped)
        self.progress.stepped = True
        return out

    def __call__(self, batch: t.Any, batch_idx: int) -> t.Any:
        if not self.optimizers:
            self.output = None
            self._forward_backward(
                batch, batch_idx, 0, None, stepping=False, zero=False, mark=False
            )
            return _batch_output(self.output)
        accumulate = False
        if self.query:
            for _, answer in self.bus.call(
                "should_optimizer_step",
                trainer=self.trainer, module=self.module, batch_idx=batch_idx,
            ):  # fmt: skip
                if answer is False:
                    accumulate = True
        if len(self.optimizers) == 1:
            return self._optimize(0, self.optimizers[0], batch, batch_idx, accumulate)
        outputs = []
        for idx, opt in enumerate(self.optimizers):
            if self.toggling is not None:
                with self.toggling.toggled(
                    self.module, opt, self.optimizers, sync_grad=not accumulate, fabric=self.fabric
                ):
                    outputs.append(self._optimize(idx, opt, batch, batch_idx, accumulate))
            else:
                outputs.append(self._optimize(idx, opt, batch, batch_idx, accumulate))
        return outputs

    def _optimize(
        self, idx: int, opt: LoopOptimizer, batch: t.Any, batch_idx: int, accumulate: bool
    ) -> t.Any:
        self.output = None
        if accumulate:
            self._forward_backward(
                batch, batch_idx, idx, opt, stepping=False, zero=True, mark=False
            )
            return _batch_output(self.output)

        style, epoch = self.style, self.progress.epoch

        def closure() -> t.Any:
            return self._forward_backward(
                batch, batch_idx, idx, opt, stepping=True, zero=True, mark=style is not _V0
            )

        try:
            if style is _DEFAULT:
                opt.step(closure=closure)
            elif style is _V2:
                args: tuple[t.Any, ...] = (epoch, batch_idx, opt, closure)
                self.step_hook(*args[: self.nargs])
            elif style is _V1:
                lbfgs = isinstance(opt.optimizer, torch.optim.LBFGS)
                amp = bool(getattr(self.fabric.precision, "needs_fabric_backward", False))
                args = (epoch, batch_idx, opt, idx, closure, False, amp, lbfgs)
                self.step_hook(*args[: self.nargs])
            else:
                # The earliest API: training_step and backward ran before optimizer_step, which
                # steps and zeroes itself; second_order_closure re-evaluates (LBFGS).
                self._forward_backward(
                    batch, batch_idx, idx, opt, stepping=True, zero=False, mark=False
                )
                args = (epoch, batch_idx, opt, idx, closure)
                self.step_hook(*args[: self.nargs])
        except _SkipBatch:
            pass
        self.accumulated[idx] = False
        out, self.output = self.output, None
        return _batch_output(out)

    def _forward_backward(
        self,
        batch: t.Any,
        batch_idx: int,
        idx: int,
        opt: LoopOptimizer | None,
        stepping: bool,
        zero: bool,
        mark: bool,
        out: t.Any = _RUN,
    ) -> t.Any:
        """training_step, zero_grad (at the start of a window), backward.

        ``stepping``: run for a step (None from training_step abandons the step), else for an
        accumulating batch. ``zero``: zero gradients first unless the window accumulated some.
        ``mark``: count the batch as stepped (the closure ran inside a step). ``out``: what
        training_step returned, when the caller ran it already.
        """
        if out is _RUN:
            args = (batch, batch_idx, idx) if self.pass_idx else (batch, batch_idx)
            if self.direct and not self.fabric._forward_active:
                out = self.training_step(*args)
            else:
                out = self.redirect(*args)
        self.output = out
        if isinstance(out, torch.Tensor):
            loss = out
        elif out is None:
            if not self.warned_none:
                self.warned_none = True
                warnings.warn(
                    f"{type(self.module).__name__}.training_step returned None: the optimizer "
                    "does not step for that batch (warned once)",
                    UserWarning,
                    stacklevel=2,
                )
            if stepping:
                raise _SkipBatch
            return None
        elif isinstance(out, c.Mapping) and "loss" in out:
            loss = out["loss"]
        else:
            raise TypeError(
                f"{type(self.module).__name__}.training_step returned {_describe_output(out)}; "
                "in automatic optimization return the loss tensor, a dict with a 'loss' key, "
                "or None to skip the batch"
            )
        if opt is None:
            return loss
        if not loss.requires_grad:
            raise RuntimeError(
                f"{type(self.module).__name__}.training_step returned a loss that does not "
                "require grad (computed under torch.no_grad(), detached, or from no parameter), "
                "so no gradient can flow from it. Return the loss computed from the module's "
                "parameters, or None to skip the batch"
            )
        if not _finite(loss):
            raise FloatingPointError(
                f"{type(self.module).__name__}.training_step returned a non-finite loss "
                f"({loss.detach().flatten()[:4].tolist()}) at epoch {self.progress.epoch}, "
                f"batch {batch_idx} (global step {self.progress.global_step}). The Trainer stops "
                "rather than step on nan/inf gradients. Lower the learning rate, clip gradients "
                "(Trainer(gradient_clip_val=...)), check this batch's inputs, or return None "
                "from training_step to skip such batches"
            )
        if zero and not self.accumulated[idx]:
            if self.zero_grad_hook is not None:
                self.zero_grad_hook(self.progress.epoch, batch_idx, opt)
            else:
                opt.zero_grad()
        if not stepping:
            self.accumulated[idx] = True
        self.fabric.backward(loss, model=self.wrapped)
        if mark:
            self.progress.stepped = True
        return loss


def _finite(loss: torch.Tensor) -> bool:
    # On the hot path: for a one-element loss, item() costs a fraction of isfinite().all().
    if loss.numel() == 1:
        return math.isfinite(loss.item())
    return bool(torch.isfinite(loss).all())


def _batch_output(out: t.Any) -> t.Any:
    # What on_train_batch_end receives as outputs: {"loss": detached loss, ...} (as Lightning).
    if isinstance(out, torch.Tensor):
        return {"loss": out.detach()}
    return out


def _describe_output(out: object) -> str:
    if isinstance(out, c.Mapping):
        return f"a dict without a 'loss' key (keys: {', '.join(map(repr, out)) or 'none'})"
    return f"a {type(out).__name__}"


# -- self.log bookkeeping --------------------------------------------------------------------

_REDUCE_NAMES: dict[t.Any, str] = {
    "mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min",
    torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
    max: "max", min: "min", sum: "sum",
}  # fmt: skip


class _Aggregate:
    """Reduces one metric's values over an epoch (mean weighted by batch size, sum, max, min)."""

    __slots__ = ("fx", "total", "weight", "values", "prog_bar", "logger", "sync", "forked")

    def __init__(self, fx: t.Any, prog_bar: bool, logger: bool, sync: bool, forked: bool) -> None:
        self.fx = fx
        self.total: torch.Tensor | None = None
        self.weight = 0.0
        self.values: list[torch.Tensor] = []
        self.prog_bar, self.logger, self.sync, self.forked = prog_bar, logger, sync, forked

    def update(self, value: torch.Tensor, batch_size: int | None) -> None:
        fx = self.fx
        if fx == "mean":
            w = 1.0 if batch_size is None else float(batch_size)
            v = value.double() * w
            self.total = v if self.total is None else self.total + v
            self.weight += w
        elif fx == "sum":
            self.total = value if self.total is None else self.total + value
        elif fx == "max":
            self.total = value if self.total is None else torch.maximum(self.total, value)
        elif fx == "min":
            self.total = value if self.total is None else torch.minimum(self.total, value)
        else:
            self.values.append(value)

    def compute(self, fabric: Fabric) -> torch.Tensor:
        fx, sync = self.fx, self.sync and fabric.world_size > 1
        if fx == "mean":
            assert self.total is not None
            total, weight = self.total, torch.tensor(self.weight, dtype=torch.float64)
            if sync:
                total = fabric.all_reduce(total, reduce_op="sum")
                weight = fabric.all_reduce(weight.to(total.device), reduce_op="sum")
            return (total / weight.to(total.device)).float()
        if fx in ("sum", "max", "min"):
            assert self.total is not None
            op: t.Any = fx
            return fabric.all_reduce(self.total, reduce_op=op) if sync else self.total
        stacked = torch.stack(self.values)
        if sync:
            stacked = fabric.all_gather(stacked).flatten()
        return torch.as_tensor(fx(stacked))


class _Metrics:
    """What ``self.log`` recorded: step values, epoch aggregates, and where they go.

    Step values (``on_step``) are written to the loggers every ``log_every_n_steps`` counted
    batches; epoch aggregates (``on_epoch``) are reduced and written at the end of the training
    epoch and of each validation run. ``callback`` holds the latest value of everything.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.callback: dict[str, torch.Tensor] = {}
        self.logged: dict[str, t.Any] = {}
        self.pbar: dict[str, torch.Tensor] = {}
        self.step_values: dict[str, torch.Tensor] = {}
        self.train_aggs: dict[str, _Aggregate] = {}
        self.val_aggs: dict[str, _Aggregate] = {}
        self.defaults = (True, False)  # (on_step, on_epoch) where the module logs now
        self.epoch_end = False  # the running phase's epoch reductions are done
        self.collect: dict[str, torch.Tensor] | None = None  # validate() gathers its results
        self._saved: tuple[tuple[bool, bool], bool] = (self.defaults, self.epoch_end)

    def reset_run(self) -> None:
        self.step_values = {}
        self.defaults = (True, False)
        self.epoch_end = False

    def connect(self, bus: t.Any) -> None:
        # on_train_batch_end's writer is connected on the first step value logged, so a run
        # that logs nothing per step pays nothing per batch for it.
        self.bus = bus
        self.batch_end_connected = False
        bus.connect(self._train_epoch_start, "on_train_epoch_start", priority=_FIRST)
        bus.connect(self._train_epoch_reduce, "on_train_epoch_end", priority=_FIRST)
        bus.connect(self._train_epoch_write, "on_train_epoch_end", priority=_LAST)
        bus.connect(self._val_start, "on_validation_start", priority=_FIRST)
        bus.connect(self._val_batch_end, "on_validation_batch_end", priority=_LAST)
        bus.connect(self._val_epoch_end, "on_validation_epoch_end", priority=_LAST)
        bus.connect(self._val_end, "on_validation_end", priority=_LAST)

    # -- recording (called by LoopModule.log) --------------------------------------------------

    def log(
        self,
        name: str,
        value: t.Any,
        prog_bar: bool,
        logger: bool,
        on_step: bool | None,
        on_epoch: bool | None,
        reduce_fx: t.Any,
        sync_dist: bool,
        batch_size: int | None,
    ) -> None:
        if on_step is None:
            on_step = self.defaults[0]
        if on_epoch is None:
            on_epoch = self.defaults[1]
        value = _scalar(name, value)
        fx = _REDUCE_NAMES.get(reduce_fx, reduce_fx)
        if on_step:
            if sync_dist and self.trainer.fabric.world_size > 1:
                op: t.Any = fx if fx in ("sum", "max", "min") else "mean"
                value = self.trainer.fabric.all_reduce(value, reduce_op=op)
            key = f"{name}_step" if on_epoch else name
            if logger:
                self.step_values[key] = value
                if not self.batch_end_connected:
                    self.batch_end_connected = True
                    self.bus.connect(self._train_batch_end, "on_train_batch_end", priority=_LAST)
            self.callback[key] = value
            if on_epoch:
                self.callback[name] = value
            if prog_bar:
                self.pbar[key] = value
        if on_epoch:
            aggs = self.val_aggs if self.trainer.validating else self.train_aggs
            agg = aggs.get(name)
            if agg is None:
                if not isinstance(fx, str) and not callable(fx):
                    raise ValueError(
                        f"self.log({name!r}, reduce_fx={reduce_fx!r}): use 'mean', 'sum', "
                        "'max', 'min' or a function of a 1-d tensor"
                    )
                if isinstance(fx, str) and fx not in ("mean", "sum", "max", "min"):
                    raise ValueError(
                        f"self.log({name!r}, reduce_fx={reduce_fx!r}): use 'mean', 'sum', "
                        "'max', 'min' or a function of a 1-d tensor"
                    )
                agg = aggs[name] = _Aggregate(fx, prog_bar, logger, sync_dist, on_step)
            agg.update(value, batch_size)
            if self.epoch_end:
                # Logged after the reductions (an epoch-end hook): visible to monitors now.
                self.callback[f"{name}_epoch" if on_step else name] = value

    # -- the bus receivers -----------------------------------------------------------------

    def _log_step(self) -> int:
        p = self.trainer.progress
        automatic = self.trainer._module is not None and self.trainer._module.automatic_optimization
        return p.global_step if automatic else p.total_batches

    def _write(self, metrics: dict[str, torch.Tensor]) -> None:
        if not metrics:
            return
        self.logged.update(metrics)
        if self.collect is not None:
            self.collect.update(metrics)
        trainer = self.trainer
        if trainer.loggers:
            plain: dict[str, float] = {k: float(v.item()) for k, v in metrics.items()}
            plain.setdefault("epoch", trainer.current_epoch)
            step = max(self._log_step() - 1, 0)
            trainer.fabric.log_dict(plain, step=step)

    def _train_epoch_start(self) -> None:
        self.train_aggs = {}
        self.defaults, self.epoch_end = (True, False), False

    def _train_batch_end(self) -> None:
        values = self.step_values
        if not values:
            return
        self.step_values = {}
        trainer = self.trainer
        counted = trainer.progress.stepped or not trainer.lightning_module.automatic_optimization
        if (counted and self._log_step() % trainer.log_every_n_steps == 0) or trainer.should_stop:
            self._write(values)

    def _reduce(self, aggs: dict[str, _Aggregate]) -> dict[str, torch.Tensor]:
        fabric = self.trainer.fabric
        written: dict[str, torch.Tensor] = {}
        for name, agg in aggs.items():
            value = agg.compute(fabric)
            key = f"{name}_epoch" if agg.forked else name
            self.callback[key] = value
            if agg.forked:
                self.callback[name] = value
            if agg.prog_bar:
                self.pbar[key] = value
            if agg.logger:
                written[key] = value
        return written

    def _train_epoch_reduce(self) -> None:
        self._reduce(self.train_aggs)
        self.defaults, self.epoch_end = (False, True), True

    def _train_epoch_write(self) -> None:
        # Again: epoch-end hooks may have logged more (on_train_epoch_end's self.log).
        self._write(self._reduce(self.train_aggs))
        self.train_aggs = {}
        self.defaults, self.epoch_end = (True, False), False
        for lg in self.trainer.loggers:
            if callable(getattr(lg, "save", None)):
                lg.save()

    def _val_start(self) -> None:
        self.val_aggs = {}
        self._saved = (self.defaults, self.epoch_end)
        self.defaults, self.epoch_end = (False, True), False

    def _val_batch_end(self) -> None:
        if self.step_values:
            values, self.step_values = self.step_values, {}
            self._write(values)

    def _val_epoch_end(self) -> None:
        self._write(self._reduce(self.val_aggs))
        self.epoch_end = True

    def _val_end(self) -> None:
        self.val_aggs = {}
        self.defaults, self.epoch_end = self._saved


def _scalar(name: str, value: t.Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"self.log({name!r}, ...) got a tensor of shape {tuple(value.shape)}; log a "
                "scalar (one element), e.g. value.mean()"
            )
        return value.detach().reshape(())
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    raise TypeError(
        f"self.log({name!r}, ...) got a {type(value).__name__}; log a number or a one-element "
        "tensor (use log_dict for a dict)"
    )


# -- helpers -----------------------------------------------------------------------------------


def _as_list(value: t.Any) -> list[t.Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _resolve_loggers(logger: t.Any) -> list[t.Any]:
    if logger is True:
        # Lightning's default: TensorBoard when it is available, otherwise no logger.
        reg = registry()
        return [reg.create("logger", "tensorboard")] if "tensorboard" in reg else []
    if logger is False or logger is None:
        return []
    items = _as_list(logger)
    for item in items:
        if isinstance(item, bool):
            raise TypeError(f"logger={logger!r}: a list of loggers cannot hold True or False")
    return items  # names and objects are checked by Fabric


def _create(name: str, feature: str, **kwargs: t.Any) -> t.Any:
    try:
        return registry().create("subscriber", name, **kwargs)
    except PluginNotFoundError as err:
        raise RuntimeError(f"{feature} needs the {name!r} plugin. {err}") from err


def _check_accumulate(value: t.Any) -> None:
    if isinstance(value, dict):
        if not value or not all(
            isinstance(k, int) and k >= 0 and type(v) is int and v >= 1 for k, v in value.items()
        ):
            raise ValueError(
                f"accumulate_grad_batches={value!r}: a dict maps epoch (int >= 0) to a number "
                "of batches (int >= 1), e.g. {0: 4, 5: 2}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"accumulate_grad_batches={value!r}: pass a positive int or a dict {{epoch: N}}"
        )


def _accumulation_at(schedule: dict[int, int], epoch: int) -> int:
    current = 1
    for start in sorted(schedule):
        if start <= epoch:
            current = schedule[start]
    return current


def _check_limit(key: str, value: t.Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key}={value!r}: pass an int number of batches or a fraction in [0, 1]")
    if isinstance(value, float) and value > 1.0:
        raise ValueError(f"{key}={value!r}: a float is a fraction of the batches, in [0, 1]")


def _length(loader: t.Any) -> float:
    try:
        return float(len(loader))
    except TypeError:
        return math.inf


def _limit(n: float, limit: int | float | None) -> float:
    if limit is None:
        return n
    if isinstance(limit, float):
        if n == math.inf:
            if limit == 1.0:
                return n
            raise ValueError(
                f"a fractional limit ({limit}) needs data with a length; pass an int number of "
                "batches"
            )
        return float(max(1, int(n * limit))) if limit > 0 else 0.0
    return float(min(n, limit))


def _is_loader_list(value: t.Any) -> bool:
    from torch.utils.data import DataLoader

    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(v, DataLoader) for v in value)
    )


def _pick_loader(given: t.Any, datamodule: t.Any, module: LoopModule, method: str) -> t.Any:
    if given is not None:
        return given
    for owner in (datamodule, module):
        fn = getattr(owner, method, None) if owner is not None else None
        if callable(fn):
            return fn()
    return None


def _check_module(model: t.Any, what: str) -> LoopModule:
    if not isinstance(model, LoopModule):
        kind = type(model).__name__ if model is not None else "None"
        raise TypeError(
            f"{what}() takes a loopkit.LoopModule, got {kind}; subclass loopkit.LoopModule "
            "(the LightningModule of loopkit) and define training_step and configure_optimizers"
        )
    return model


def _has_settings(config: LRSchedulerConfig) -> bool:
    return (
        config.interval != "epoch"
        or config.frequency != 1
        or config.monitor is not None
        or config.strict is not True
        or config.name is not None
    )


def _summary(module: nn.Module) -> str:
    rows = [("", "Name", "Type", "Params")]
    for i, (name, child) in enumerate(module.named_children()):
        rows.append((str(i), name, type(child).__name__, _count(child)))
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.append(f"{_human(trainable)} trainable params, {_human(total - trainable)} frozen")
    return "\n".join(lines)


def _count(module: nn.Module) -> str:
    return _human(sum(p.numel() for p in module.parameters()))


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
