"""``Trainer``: a Lightning-style trainer assembled from loopkit's parts.

The parts: a :class:`~loopkit.Fabric` (devices, precision, strategy, the hook bus, loggers), the
:class:`~loopkit.loop.FitLoop` (epochs, batches, validation, stop conditions), the
``configure_optimizers`` parser (:mod:`loopkit.optim`) and plugins found by name (accumulation,
toggling, LR scheduling, loggers, progress bar). This module ties them together: it checks the
options, wires the parts onto one Fabric's bus and runs fit/validate, with manual optimization
inline. Automatic optimization of one batch is :mod:`loopkit.automatic`; the bookkeeping of
``self.log`` is :mod:`loopkit.metrics`; checkpointing is :mod:`loopkit.trainer_state`.

It must never import a plugin package: plugins are created through the registry, by name.
"""

from __future__ import annotations

import collections.abc as c
import functools
import math
import os
import typing as t
import warnings

import torch
from torch import nn

from loopkit.automatic import _DEFAULT, _AutomaticStep, _optimizer_step_style
from loopkit.fabric import Fabric
from loopkit.hooks import HOOKS
from loopkit.loop import FitLoop, Progress, run_validation
from loopkit.metrics import _LAST, _Metrics
from loopkit.metrics import _Aggregate as _Aggregate  # re-exported: trainer_state imports it here
from loopkit.module import LoopModule, LoopOptimizer, as_loop_optimizer
from loopkit.optim import LRSchedulerConfig, parse_configure_optimizers
from loopkit.plugins import PluginNotFoundError, registry
from loopkit.trainer_state import Checkpointing
from loopkit.wrappers import FabricModule

__all__ = ["Trainer"]


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
        """Run ``fn(*args)`` (a method of this trainer) where the strategy runs training: here,
        or in processes it starts (``ddp_spawn``), every time (a strategy that has its processes
        already runs it here). From started processes, global rank zero's results come back:
        ``fit`` leaves this process's module, counters, metrics and callbacks as they ended
        there."""
        out = self.fabric.launch(_Run(self, fn.__name__), *args)
        if isinstance(out, _Spawned):
            if out.state is not None:  # from _fit(module, ...)
                module = args[0]
                self._module, module.trainer = module, self
                self._checkpointing.recover(module, out.state)
            return out.value
        return out

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


# -- helpers -----------------------------------------------------------------------------------


class _Run:
    """A trainer method that ``fabric.launch`` may send to processes it starts: picklable (the
    trainer travels with it), it knows whether it runs in the process that made it."""

    def __init__(self, trainer: Trainer, method: str) -> None:
        self.trainer, self.method, self.pid = trainer, method, os.getpid()

    def __call__(self, _fabric: Fabric, *args: t.Any) -> t.Any:
        # (In a started process, Fabric's launch gave the module tensors of its own first.)
        value = getattr(self.trainer, self.method)(*args)
        if os.getpid() == self.pid:
            return value
        # Every rank builds the state (gathering a sharded module is collective); the launcher
        # sends global rank zero's back.
        state = self.trainer._checkpointing.for_parent() if self.method == "_fit" else None
        return _Spawned(value, state)


class _Spawned(t.NamedTuple):
    """What a trainer method returns from a process the launch started."""

    value: t.Any
    state: dict[str, t.Any] | None


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
