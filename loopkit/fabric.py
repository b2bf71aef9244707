"""``Fabric``: the own-your-loop facade over the kernel's parts.

The user writes the loop; Fabric resolves the accelerator, strategy and precision by name (through
the plugin registry), wraps the user's objects, fires the optimization-step hooks on its bus and
runs the phases (forward, backward, optimizer step) with whatever contexts plugins wrapped around
them. A script written for Lightning Fabric runs after changing its import line.

The step methods (``backward``, the wrapped optimizer's ``step`` and ``zero_grad``, the wrapped
module's call) are the hot path: they allocate nothing they can avoid and look nothing up by
name beyond the bus's own cached dispatch. This module never imports a plugin package.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import hashlib
import inspect
import os
import random
import typing as t
import warnings
from pathlib import Path

import torch
from torch import nn

from loopkit import _log
from loopkit.accelerator import Accelerator, CPUAccelerator, CUDAAccelerator, MPSAccelerator
from loopkit.checkpoint import CheckpointIO
from loopkit.events import Bus, Subscription
from loopkit.hooks import FABRIC_FIRES, HOOKS, is_default_hook
from loopkit.plugins import Plugin, registry
from loopkit.precision import Precision
from loopkit.strategy import SingleDeviceStrategy, Strategy, move_to_device
from loopkit.wrappers import FabricDataLoader, FabricModule, FabricOptimizer, unwrap

__all__ = ["Fabric", "Phase"]

PhaseName = t.Literal["forward", "backward", "optimizer_step"]
_PHASES: tuple[PhaseName, ...] = ("forward", "backward", "optimizer_step")

#: Environment variables ``loopkit run`` sets; each fills an argument the script left at default.
_ENV = {
    "accelerator": "LOOPKIT_ACCELERATOR",
    "strategy": "LOOPKIT_STRATEGY",
    "devices": "LOOPKIT_DEVICES",
    "num_nodes": "LOOPKIT_NUM_NODES",
    "precision": "LOOPKIT_PRECISION",
}
#: Set by ``seed_everything``: the seed (read by samplers and spawned ranks) and worker seeding.
SEED_ENV = "LOOPKIT_GLOBAL_SEED"
SEED_WORKERS_ENV = "LOOPKIT_SEED_WORKERS"

#: The occupants the kernel embeds; resolved without reading any entry point.
_EMBEDDED: dict[str, dict[str, c.Callable[[], t.Any]]] = {
    "accelerator": {"cpu": CPUAccelerator, "cuda": CUDAAccelerator, "mps": MPSAccelerator},
    "precision": {"32-true": Precision},
    "strategy": {"single_device": SingleDeviceStrategy},
}


class Phase:
    """What a phase context sees, and may change, while it wraps one phase.

    ``name`` is ``"forward"``, ``"backward"`` or ``"optimizer_step"``; ``module`` is the user's
    module (or None when unknown); ``optimizer`` is set in the optimizer-step phase; ``loss`` is
    set in the backward phase, and a context may replace it (accumulation divides it).
    """

    __slots__ = ("loss", "module", "name", "optimizer")

    def __init__(
        self,
        name: PhaseName,
        module: nn.Module | None,
        optimizer: torch.optim.Optimizer | None = None,
        loss: torch.Tensor | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.optimizer = optimizer
        self.loss = loss


PhaseWrapper = c.Callable[[Phase], contextlib.AbstractContextManager[t.Any]]


class _PhaseHandle:
    def __init__(self, fabric: Fabric, phase: PhaseName, wrapper: PhaseWrapper) -> None:
        self._fabric, self._phase, self._wrapper = fabric, phase, wrapper

    def remove(self) -> None:
        wrappers = self._fabric._phase_wrappers[self._phase]
        if self._wrapper in wrappers:
            wrappers.remove(self._wrapper)
        self._fabric._refresh_fast_paths()


class Fabric:
    """Own the loop; let loopkit handle devices, precision, distribution and hooks.

    Every argument is keyword-only. ``accelerator``, ``strategy`` and ``precision`` are names
    resolved through the plugin registry (or instances); ``plugins`` are names or instances of
    any kind; ``callbacks`` are objects whose methods are called by hook name; ``loggers`` are
    objects with ``log_metrics(metrics, step)`` (or logger plugin names).
    """

    def __init__(
        self,
        *,
        accelerator: str | Accelerator = "auto",
        strategy: str | Strategy = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int = 1,
        precision: str | int | Precision | None = None,
        plugins: t.Any = None,
        callbacks: t.Any = None,
        loggers: t.Any = None,
    ) -> None:
        accelerator = _env_default("accelerator", accelerator, "auto")
        strategy = _env_default("strategy", strategy, "auto")
        devices = _env_default("devices", devices, "auto")
        precision = _env_default("precision", precision, None)
        nodes: t.Any = _env_default("num_nodes", num_nodes, 1)
        if isinstance(nodes, str) and nodes.strip().isdigit():
            nodes = int(nodes)
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"num_nodes={nodes!r}: pass a positive int")
        num_nodes = nodes

        self._bus = Bus(fires=FABRIC_FIRES)
        # ``fabric.call`` is the bus's own call: one Python frame less on every hook a loop
        # fires (the method below documents it, and runs only if this is ever removed).
        setattr(self, "call", self._bus.call)  # noqa: B010 (not self.__dict__: keeps the fast layout)
        #: Set by a Trainer that drives this Fabric; hooks receive it as ``trainer=``.
        self._trainer: t.Any = None
        self._phase_wrappers: dict[PhaseName, list[PhaseWrapper]] = {p: [] for p in _PHASES}
        self._forward_active = False
        #: id(user's module) -> its wrapper, for every module set up (plugins read this).
        self._models: dict[int, FabricModule] = {}
        #: (wrapper, user's module, forward module) of the only module set up, else None:
        #: what ``backward()`` uses without ``model=``.
        self._sole: tuple[FabricModule, nn.Module, nn.Module] | None = None
        self._module_subscriptions: dict[int, list[Subscription]] = {}
        self._backward_calls = 0
        # Whether each step hook has receivers; the bus calls _relisten on every change.
        self._hear_zero_grad = self._hear_before_backward = self._hear_after_backward = False
        self._hear_before_step = self._hear_step = False
        self._bus.watchers.append(self._relisten)
        self._launched = False
        self._warned_no_sync = False

        subscribers: list[t.Any] = []
        slots: dict[str, t.Any] = {}
        for item in _as_list(plugins):
            plugin = _resolve_plugin(item)
            kind = getattr(plugin, "kind", "subscriber")
            if kind in ("strategy", "precision", "accelerator", "checkpoint_io"):
                if kind in slots:
                    raise ValueError(
                        f"plugins= holds two {kind} plugins ({slots[kind]!r} and {plugin!r}); "
                        f"a {kind} slot has one occupant"
                    )
                slots[kind] = plugin
            elif kind == "logger":
                loggers = [*_as_list(loggers), plugin]
            else:
                subscribers.append(plugin)
        self._accelerator = _resolve_accelerator(slots.pop("accelerator", accelerator))
        self._precision = _resolve_precision(slots.pop("precision", precision))
        self._device_ids = self._accelerator.parse_devices(devices)
        self._strategy = _resolve_strategy(
            slots.pop("strategy", strategy), self._accelerator, len(self._device_ids), num_nodes
        )
        self._strategy.connect(self._accelerator, self._precision, self._device_ids, num_nodes)
        self._precision.attach(self)  # learns the device type it autocasts and scales on
        # Where strategy and precision keep the base behaviour, the step methods call what it
        # amounts to directly (the same calls, fewer Python frames on the hot path).
        strategy, prec = self._strategy, self._precision
        self._direct_backward = (
            _is_base(strategy, Strategy, "backward")
            and _is_base(prec, Precision, "pre_backward")
            and _is_base(prec, Precision, "backward")
        )
        self._direct_step = _is_base(strategy, Strategy, "optimizer_step") and _is_base(
            prec, Precision, "optimizer_step"
        )
        self._unscale: c.Callable[[torch.optim.Optimizer], None] | None = (
            None if _is_base(prec, Precision, "unscale_gradients") else prec.unscale_gradients
        )
        self._checkpoint_io: CheckpointIO | None = _resolve_checkpoint_io(
            slots.pop("checkpoint_io", None)
        )
        self._loggers = [_resolve_logger(lg) for lg in _as_list(loggers)]
        self._callbacks = _as_list(callbacks)
        self._plugins: list[t.Any] = []
        for cb in self._callbacks:
            self._bus.connect(cb)
            if isinstance(cb, Plugin):  # a subscriber plugin given as a callback
                cb.attach(self)
        for plugin in subscribers:
            self.add_plugin(plugin)
        # Logger plugins hear hooks too (on_exception makes their data durable) and learn their
        # host (its rank; the Trainer's root folder) through attach, as subscribers do.
        for lg in self._loggers:
            if isinstance(lg, Plugin) and all(lg is not cb for cb in self._callbacks):
                self._bus.connect(lg)
                lg.attach(self)
        self._relisten()
        self._refresh_fast_paths()
        if _log.tracing:
            _log.logger().debug(
                "fabric resolved",
                accelerator=type(self._accelerator).__name__,
                strategy=type(self._strategy).__name__,
                precision=repr(self._precision),
                devices=self._device_ids,
            )

    # -- properties -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        """This process's index among all processes of the run (0 on one device)."""
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        """This process's index among the processes of its node."""
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        """This node's index among the nodes of the run."""
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        """How many processes the run has."""
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this is the process of global rank 0."""
        return self._strategy.is_global_zero

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def accelerator(self) -> Accelerator:
        return self._accelerator

    @property
    def precision(self) -> Precision:
        """The precision plugin (save it in ``state`` to checkpoint a grad scaler)."""
        return self._precision

    @property
    def bus(self) -> Bus:
        """The hook bus: ``fabric.bus.connect(...)`` subscribes explicitly."""
        return self._bus

    @property
    def callbacks(self) -> list[t.Any]:
        """The callbacks given to the constructor, in order."""
        return list(self._callbacks)

    @property
    def loggers(self) -> list[t.Any]:
        """Every logger, in order."""
        return list(self._loggers)

    @property
    def logger(self) -> t.Any:
        """The first logger (None when there is none)."""
        return self._loggers[0] if self._loggers else None

    @property
    def plugins(self) -> list[t.Any]:
        """The subscriber plugins attached to this Fabric, in attach order."""
        return list(self._plugins)

    # -- plugins and phases ------------------------------------------------------------------

    def add_plugin(self, plugin: t.Any) -> t.Any:
        """Attach a subscriber plugin (a name or an instance): connect its hooks, call attach."""
        plugin = _resolve_plugin(plugin)
        self._plugins.append(plugin)
        self._bus.connect(plugin)
        attach = getattr(plugin, "attach", None)
        if attach is not None:
            attach(self)
        return plugin

    def wrapped_module(self, module: nn.Module) -> FabricModule | None:
        """The object ``setup`` returned for the user's ``module`` (None if it was not set up).

        Plugins that see the user's own module (a :class:`Phase`, a hook's ``module=``) use it
        to reach what the strategy acts on, e.g. ``fabric.no_backward_sync(wrapped)``.
        """
        if isinstance(module, FabricModule):
            return module
        return self._models.get(id(module))

    def get_plugin(self, name_or_type: str | type) -> t.Any:
        """The attached plugin with that registry name or of that type, or None."""
        for p in self._plugins:
            if isinstance(name_or_type, str):
                if getattr(p, "plugin_name", None) == name_or_type:
                    return p
            elif isinstance(p, name_or_type):
                return p
        return None

    def wrap_phase(self, phase: PhaseName, wrapper: PhaseWrapper) -> _PhaseHandle:
        """Run ``wrapper(Phase)`` as a context around every ``phase``; returns a removable handle.

        Contexts are entered in registration order and exited in reverse. In the backward phase
        a context may replace ``phase.loss`` before the hooks and autograd see it.
        """
        if phase not in self._phase_wrappers:
            raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(_PHASES)}")
        if not callable(wrapper):
            raise TypeError(f"wrap_phase({phase!r}, ...) needs a callable, got {wrapper!r}")
        self._phase_wrappers[phase].append(wrapper)
        self._refresh_fast_paths()
        return _PhaseHandle(self, phase, wrapper)

    def _relisten(self) -> None:
        """Re-read which step hooks have receivers (the bus calls this on every change).

        The step methods read these flags and fire a hook only when it has receivers, so a loop
        without callbacks does not even build the hooks' arguments. Under the debug trace every
        hook is fired, so that the trace shows them all.
        """
        bus, every = self._bus, _log.tracing
        self._hear_zero_grad = every or bool(bus.receivers("on_before_zero_grad"))
        self._hear_before_backward = every or bool(bus.receivers("on_before_backward"))
        self._hear_after_backward = every or bool(bus.receivers("on_after_backward"))
        self._hear_before_step = every or bool(bus.receivers("on_before_optimizer_step"))
        self._hear_step = every or bool(bus.receivers("on_optimizer_step"))

    def _refresh_fast_paths(self) -> None:
        self._forward_active = bool(self._precision.active or self._phase_wrappers["forward"])
        for wrapped in self._models.values():
            wrapped._refresh()

    def _enter_phase(self, stack: contextlib.ExitStack, phase: Phase) -> None:
        for wrapper in self._phase_wrappers[phase.name]:
            stack.enter_context(wrapper(phase))

    def _run_forward(self, wrapped: FabricModule, args: tuple[t.Any, ...], kwargs: t.Any) -> t.Any:
        precision = self._precision
        args, kwargs = precision.convert_input((args, kwargs))
        with contextlib.ExitStack() as stack:
            stack.enter_context(precision.forward_context())
            if self._phase_wrappers["forward"]:
                self._enter_phase(stack, Phase("forward", wrapped.module))
            out = wrapped.forward_module(*args, **kwargs)
        return precision.convert_output(out)

    # -- set-up -----------------------------------------------------------------------------

    def launch(
        self, function: c.Callable[..., t.Any] | None = None, *args: t.Any, **kwargs: t.Any
    ) -> t.Any:
        """Start the run's processes (where the strategy needs to) and run ``function``.

        ``function(fabric, *args, **kwargs)`` runs in every process; its result (this
        process's) is returned. Without a function, the processes are set up and None returned.
        """
        if function is not None and not callable(function):
            raise TypeError(f"launch() takes a function to run, got {function!r}")
        self._launched = True
        # A picklable object, not a closure: spawn launchers send it to new processes.
        return self._strategy.launch(_Launched(self, function), *args, **kwargs)

    def _ensure_environment(self) -> None:
        if not self._launched:
            self._launched = True
            self._strategy.setup_environment()

    def setup(
        self, module: nn.Module, *optimizers: torch.optim.Optimizer, move_to_device: bool = True
    ) -> t.Any:
        """Wrap ``module`` and its ``optimizers``; returns the module, or ``(module, *optimizers)``.

        Call it once per model (a GAN calls it for the generator and for the discriminator,
        each with its optimizers). Each optimizer must optimize parameters of ``module``.
        """
        wrapped = self.setup_module(module, move_to_device=move_to_device)
        if not optimizers:
            return wrapped
        return (wrapped, *self._setup_optimizers(optimizers, wrapped))

    def setup_module(self, module: nn.Module, move_to_device: bool = True) -> FabricModule:
        """Wrap ``module``: moved to the device, converted to the precision, parallelised.

        The module's own hook methods (``on_*``, and any public method its class defines, for
        hooks fired by name with :meth:`call`) are connected to the bus, after the callbacks.
        """
        if isinstance(module, FabricModule):
            raise ValueError(
                f"{type(module.module).__name__} was already set up by fabric.setup(); "
                "set up each module once and keep using the object setup() returned"
            )
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"setup() takes a torch.nn.Module first, got {type(module).__name__}; call "
                "fabric.setup(model, optimizer)"
            )
        if id(module) in self._models:
            raise ValueError(
                f"{type(module).__name__} was already set up by this Fabric; "
                "set up each module once and keep using the object setup() returned"
            )
        self._ensure_environment()
        module = self._precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        forward_module = self._strategy.setup_module(module)
        wrapped = FabricModule(forward_module, module, self)
        self._module_subscriptions[id(module)] = self._connect_module(module)
        self._models[id(module)] = wrapped
        self._sole = (wrapped, module, forward_module) if len(self._models) == 1 else None
        self._bus.call("on_after_setup", fabric=self, module=module)
        return wrapped

    def _connect_module(self, module: nn.Module) -> list[Subscription]:
        return [self._bus.connect(getattr(module, name), name) for name in _module_hooks(module)]

    def setup_optimizers(self, *optimizers: torch.optim.Optimizer) -> t.Any:
        """Wrap optimizers whose modules were set up already; returns one or a tuple."""
        if not optimizers:
            raise ValueError("setup_optimizers() needs at least one optimizer")
        wrapped = self._setup_optimizers(optimizers, None)
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def _setup_optimizers(
        self, optimizers: c.Sequence[torch.optim.Optimizer], module: FabricModule | None
    ) -> list[FabricOptimizer]:
        out = []
        for opt in optimizers:
            if isinstance(opt, FabricOptimizer):
                raise ValueError(
                    f"{type(opt.optimizer).__name__} was already set up by fabric.setup(); "
                    "set up each optimizer once and keep using the object setup() returned"
                )
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    f"setup() takes torch optimizers after the module, got {type(opt).__name__}"
                )
            # The strategy first: a sharding strategy rebinds the optimizer to sharded parameters.
            opt = self._strategy.setup_optimizer(opt)
            owner = self._owner_of(opt, module)
            out.append(FabricOptimizer.wrap(opt, self, owner))
        return out

    def _owner_of(
        self, opt: torch.optim.Optimizer, module: FabricModule | None
    ) -> nn.Module | None:
        candidates = [module] if module is not None else list(self._models.values())
        params = {id(p) for g in opt.param_groups for p in g["params"]}
        for cand in candidates:
            own = {id(p) for p in cand.module.parameters()}
            if params <= own:
                return cand.module
        known = {id(p) for m in self._models.values() for p in m.module.parameters()}
        if module is None and params <= known:
            return None  # spans several set-up modules
        foreign = len(params - known) or len(params)
        if module is not None:
            raise ValueError(
                f"{type(opt).__name__} optimizes {foreign} parameter(s) that are not parameters "
                f"of {type(module.module).__name__}. Pass each optimizer to fabric.setup() "
                "together with the module that owns its parameters"
            )
        raise ValueError(
            f"{type(opt).__name__} optimizes {foreign} parameter(s) of no module set up by "
            "this Fabric. Set its module up first (fabric.setup_module(model)), or pass both "
            "together: model, optimizer = fabric.setup(model, optimizer)"
        )

    def setup_dataloaders(
        self,
        *dataloaders: t.Any,
        use_distributed_sampler: bool = True,
        move_to_device: bool = True,
        replace_sampler: bool | None = None,
    ) -> t.Any:
        """Wrap dataloaders: batches moved to the device, a ``DistributedSampler`` when sharding.

        ``replace_sampler`` is the older name of ``use_distributed_sampler``. Returns one
        wrapped dataloader, or a tuple of them.
        """
        if replace_sampler is not None:
            use_distributed_sampler = replace_sampler
        if not dataloaders:
            raise ValueError("setup_dataloaders() needs at least one dataloader")
        self._ensure_environment()
        out = []
        for loader in dataloaders:
            if isinstance(loader, FabricDataLoader):
                raise ValueError(
                    "this dataloader was already set up by fabric.setup_dataloaders(); keep "
                    "using the object it returned"
                )
            if not isinstance(loader, c.Iterable):
                raise TypeError(
                    f"setup_dataloaders() takes DataLoaders (or other iterables), got "
                    f"{type(loader).__name__}"
                )
            kwargs = self._strategy.distributed_sampler_kwargs()
            if use_distributed_sampler and kwargs is not None:
                loader = _with_distributed_sampler(loader, kwargs)
            _seed_workers(loader, self.global_rank)
            loader = self._strategy.process_dataloader(loader)
            device = self.device if move_to_device else None
            if device is not None and device.type == "cpu":
                device = None  # tensors are already on the CPU: skip the per-batch walk
            out.append(FabricDataLoader(loader, self, device))
        return out[0] if len(out) == 1 else tuple(out)

    # -- the step ---------------------------------------------------------------------------

    def backward(
        self, tensor: torch.Tensor, *args: t.Any, model: nn.Module | None = None, **kwargs: t.Any
    ) -> None:
        """Replaces ``loss.backward()``: runs the backward phase through strategy and precision.

        ``model`` says which set-up module the loss came from; it is needed only when several
        modules are set up and the strategy or precision must know (extra ``args``/``kwargs``
        go to ``torch.Tensor.backward``).
        """
        module: nn.Module | None
        fwd: nn.Module | None
        sole = self._sole
        if model is None or (sole is not None and model is sole[0]):
            if sole is not None:
                _, module, fwd = sole
            elif self._models:
                module = fwd = None  # several modules: the loss may come from any of them
            else:
                raise RuntimeError(
                    "fabric.backward() was called before any module was set up; call "
                    "model, optimizer = fabric.setup(model, optimizer) first"
                )
        else:
            wrapped = self._wrapper_of(model, "backward(model=...)")
            module, fwd = wrapped.module, wrapped.forward_module
        self._backward_calls += 1
        if self._phase_wrappers["backward"]:
            self._backward_in_phase(tensor, module, fwd, args, kwargs)
            return
        if self._hear_before_backward:
            self._bus.call(
                "on_before_backward", fabric=self, trainer=self._trainer, module=module, loss=tensor
            )
        if not self._direct_backward:
            self._strategy.backward(tensor, fwd, *args, **kwargs)
        elif args or kwargs:
            tensor.backward(*args, **kwargs)  # type: ignore[no-untyped-call]
        else:
            tensor.backward()  # type: ignore[no-untyped-call]
        if self._hear_after_backward:
            self._bus.call("on_after_backward", fabric=self, trainer=self._trainer, module=module)

    def _backward_in_phase(
        self,
        loss: torch.Tensor,
        module: nn.Module | None,
        fwd: nn.Module | None,
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
    ) -> None:
        phase = Phase("backward", module, loss=loss)
        with contextlib.ExitStack() as stack:
            self._enter_phase(stack, phase)
            loss = t.cast(torch.Tensor, phase.loss)
            bus = self._bus
            bus.call(
                "on_before_backward", fabric=self, trainer=self._trainer, module=module, loss=loss
            )
            self._strategy.backward(loss, fwd, *args, **kwargs)
            bus.call("on_after_backward", fabric=self, trainer=self._trainer, module=module)

    def _step_in_phase(
        self,
        optimizer: torch.optim.Optimizer,
        module: nn.Module | None,
        closure: c.Callable[[], t.Any] | None,
        kwargs: dict[str, t.Any],
    ) -> t.Any:
        with contextlib.ExitStack() as stack:
            self._enter_phase(stack, Phase("optimizer_step", module, optimizer))
            return self._strategy.optimizer_step(optimizer, closure, **kwargs)

    def _wrapper_of(self, model: nn.Module, what: str) -> FabricModule:
        if isinstance(model, FabricModule) and model._fabric is self:
            return model
        wrapped = self._models.get(id(model))
        if wrapped is None:
            raise ValueError(
                f"{what} got a {type(unwrap(model)).__name__} that was not set up by this "
                "Fabric; pass the module returned by fabric.setup()"
            )
        return wrapped

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """Clip by value (``clip_val``) or by norm (``max_norm``: returns the total norm).

        Under a grad scaler the gradients are unscaled first. With ``error_if_nonfinite`` a
        total norm that is inf or nan raises instead of scaling every gradient to nan.
        """
        if (clip_val is None) == (max_norm is None):
            raise ValueError(
                "clip_gradients() needs exactly one of clip_val= (clip by value) or "
                f"max_norm= (clip by norm); got clip_val={clip_val!r}, max_norm={max_norm!r}"
            )
        mod, opt = unwrap(module), unwrap(optimizer)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"clip_gradients(module, optimizer, ...) needs an optimizer second, got "
                f"{type(opt).__name__}"
            )
        if max_norm is not None:
            return self._strategy.clip_gradients_norm(
                mod, opt, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
            )
        self._strategy.clip_gradients_value(mod, opt, t.cast(float, clip_val))
        return None

    def autocast(self) -> contextlib.AbstractContextManager[t.Any]:
        """The precision's forward context, for computations outside the module's forward."""
        return self._precision.forward_context()

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> c.Iterator[None]:
        """Skip gradient synchronisation in the block (gradient accumulation under DDP).

        A no-op on one device; where the strategy cannot support it, a no-op with one warning.
        The strategy restores the module's previous sync state when the block exits.
        """
        if not isinstance(module, FabricModule):
            raise TypeError(
                f"no_backward_sync() needs the module returned by fabric.setup(), got "
                f"{type(module).__name__}"
            )
        if enabled and not self._strategy.supports_no_sync and not self._warned_no_sync:
            self._warned_no_sync = True
            warnings.warn(
                f"{type(self._strategy).__name__} does not support no_backward_sync(); "
                "gradients are synchronised on every backward",
                UserWarning,
                stacklevel=3,
            )
        with self._strategy.no_backward_sync(module.forward_module, enabled):
            yield

    # -- utilities --------------------------------------------------------------------------

    def to_device(self, obj: t.Any) -> t.Any:
        """Move a module, a tensor, or tensors nested in collections to ``self.device``."""
        if isinstance(obj, nn.Module):
            self._strategy.module_to_device(obj)
            return obj
        return move_to_device(obj, self.device)

    def print(self, *args: t.Any, **kwargs: t.Any) -> None:
        """``print`` on the global-zero process only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool = True) -> int:
        """Seed python's ``random``, numpy (when installed) and torch with ``seed``; return it.

        Each generator ends exactly as seeding it directly would. Without ``seed``, the seed of
        an earlier call (in this process or the launcher's) is reused, or a random one chosen.
        With ``workers``, dataloaders set up afterwards give their worker processes seeds that
        differ across ranks too (see ``docs/fabric.md``).
        """
        if seed is None:
            env = os.environ.get(SEED_ENV, "").strip()
            seed = int(env) if env.isdigit() else random.randrange(2**32)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed={seed!r}: pass an int in [0, 2**32)")
        os.environ[SEED_ENV] = str(seed)  # read by samplers and by spawned ranks
        os.environ[SEED_WORKERS_ENV] = "1" if workers else "0"
        random.seed(seed)
        try:
            import numpy as np
        except ImportError:
            pass
        else:
            np.random.seed(seed)
        torch.manual_seed(seed)
        return seed

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this call."""
        self._strategy.barrier(name)

    def broadcast(self, obj: t.Any, src: int = 0) -> t.Any:
        """Rank ``src``'s ``obj`` (picklable), on every process."""
        return self._strategy.broadcast(obj, src)

    def all_gather(self, data: t.Any, sync_grads: bool = False) -> t.Any:
        """Every process's tensors (numbers too), stacked along a new first dimension."""
        return _map_tensors(data, lambda x: self._strategy.all_gather(x, sync_grads=sync_grads))

    def all_reduce(
        self, data: t.Any, reduce_op: t.Literal["sum", "mean", "max", "min"] = "mean"
    ) -> t.Any:
        """Tensors (numbers too) reduced across processes with ``reduce_op``."""
        if reduce_op not in ("sum", "mean", "max", "min"):
            raise ValueError(
                f"all_reduce(reduce_op={reduce_op!r}): use 'sum', 'mean', 'max' or 'min'"
            )
        return _map_tensors(data, lambda x: self._strategy.all_reduce(x, reduce_op))

    @contextlib.contextmanager
    def rank_zero_first(self, local: bool = False) -> c.Iterator[None]:
        """Run the block on rank zero first (e.g. to download data), then on the others."""
        first = (self.local_rank if local else self.global_rank) == 0
        if not first:
            self.barrier("rank_zero_first")
        yield
        if first:
            self.barrier("rank_zero_first")

    @contextlib.contextmanager
    def init_module(self, empty_init: bool | None = None) -> c.Iterator[None]:
        """Build a module directly on the device, in the precision's parameter dtype.

        ``empty_init`` is accepted for compatibility; the embedded strategy always initialises.
        """
        self._ensure_environment()
        with self._strategy.module_init_context():
            yield

    @contextlib.contextmanager
    def init_tensor(self) -> c.Iterator[None]:
        """Create tensors directly on the device, in the precision's dtype."""
        with self.device, self._precision.tensor_init_context():
            yield

    # -- hooks and logging ------------------------------------------------------------------

    def call(self, hook_name: str, *args: t.Any, **kwargs: t.Any) -> list[tuple[object, t.Any]]:
        """Run every callback (plugin, set-up module) method named ``hook_name``.

        Each receiver gets the keyword arguments its signature names. Returns ``(owner,
        result)`` pairs in call order; a name nobody defines runs nothing.
        """
        return self._bus.call(hook_name, *args, **kwargs)

    def log(self, name: str, value: t.Any, step: int | None = None) -> None:
        """Send one scalar to every logger (nothing happens without loggers)."""
        if self._loggers:
            self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: c.Mapping[str, t.Any], step: int | None = None) -> None:
        """Send scalars to every logger; tensors become Python numbers once, here."""
        if not self._loggers:
            return
        plain = {name: _scalar(name, value) for name, value in metrics.items()}
        for logger in self._loggers:
            logger.log_metrics(plain, step=step)

    # -- checkpoints ------------------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike[str],
        state: c.Mapping[str, t.Any],
        filter: c.Mapping[str, c.Callable[[str, t.Any], bool]] | None = None,
    ) -> None:
        """Write ``state`` to ``path`` atomically, on the processes the strategy writes from.

        Modules, optimizers and anything with ``state_dict()`` are saved as their state dicts;
        nothing is added, so the file holds exactly the keys of ``state``. ``filter`` maps a key
        of ``state`` to ``fn(name, value) -> bool`` selecting which entries of that object's
        state dict are kept. ``save(state, path)`` (the older argument order) works too.
        """
        path, state = _save_arguments(path, state)
        if filter is not None:
            unknown = sorted(set(filter) - set(state))
            if unknown:
                raise KeyError(
                    f"filter names {', '.join(map(repr, unknown))}, which state does not hold "
                    f"(it holds {', '.join(map(repr, state)) or 'nothing'})"
                )
        converted: dict[str, t.Any] = {}
        for key, obj in state.items():
            value = self._state_of(obj)
            if filter is not None and key in filter:
                if not isinstance(value, c.Mapping):
                    raise TypeError(
                        f"filter[{key!r}] selects entries of a state dict, but state[{key!r}] "
                        f"is a {type(value).__name__}"
                    )
                keep = filter[key]
                value = {k: v for k, v in value.items() if keep(k, v)}
            converted[key] = value
        io = self._checkpoint_io
        if io is None:
            self._strategy.save_checkpoint(Path(path), converted)
        elif self._strategy.is_global_zero or not self._strategy.replicated:
            io.save_checkpoint(converted, Path(path))
        self.barrier("save")

    def _state_of(self, obj: t.Any) -> t.Any:
        obj = unwrap(obj)
        if isinstance(obj, nn.Module):
            return self._strategy.module_state_dict(obj)
        if not isinstance(obj, type) and callable(getattr(obj, "state_dict", None)):
            return obj.state_dict()
        return obj

    def _read(self, path: str | os.PathLike[str], weights_only: bool) -> t.Any:
        io = self._checkpoint_io
        if io is None:
            return self._strategy.load_checkpoint(Path(path), weights_only=weights_only)
        return io.load_checkpoint(
            Path(path), map_location=self._strategy.root_device, weights_only=weights_only
        )

    def load(
        self,
        path: str | os.PathLike[str],
        state: dict[str, t.Any] | None = None,
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, t.Any]:
        """Restore ``state`` in place from ``path``; return what the checkpoint held beyond it.

        Objects with ``load_state_dict`` are restored in place; other values are written back
        into ``state``. With ``strict``, a key of ``state`` missing from the checkpoint is an
        error naming it (and modules must match exactly). Without ``state``, the whole
        checkpoint is returned. ``weights_only=True`` refuses files that would run code when
        loaded; pass False only for files you trust.
        """
        checkpoint = self._read(path, weights_only)
        if state is None:
            return t.cast(dict[str, t.Any], checkpoint)
        if not isinstance(checkpoint, dict):
            raise TypeError(
                f"checkpoint {os.fspath(path)!r} holds a {type(checkpoint).__name__}, not a dict "
                "of named states; load it with fabric.load(path) or fabric.load_raw(path, obj)"
            )
        missing = [key for key in state if key not in checkpoint]
        if missing and strict:
            raise KeyError(
                f"checkpoint {os.fspath(path)!r} has no entry for {', '.join(map(repr, missing))}"
                f" (it holds {', '.join(map(repr, checkpoint)) or 'nothing'}); pass "
                "strict=False to restore only what it has"
            )
        for key in list(state):
            if key not in checkpoint:
                continue
            obj = unwrap(state[key])
            value = checkpoint.pop(key)
            if isinstance(obj, nn.Module):
                obj.load_state_dict(value, strict=strict)
            elif not isinstance(obj, type) and callable(getattr(obj, "load_state_dict", None)):
                obj.load_state_dict(value)
            else:
                state[key] = value
        return checkpoint

    def load_raw(
        self,
        path: str | os.PathLike[str],
        obj: t.Any,
        strict: bool = True,
        weights_only: bool = True,
    ) -> None:
        """Load a bare state dict (as ``torch.save(model.state_dict())`` wrote it) into ``obj``.

        ``obj`` is a module or an optimizer (wrapped or not), or anything with
        ``load_state_dict``.
        """
        target = unwrap(obj)
        if not callable(getattr(target, "load_state_dict", None)):
            raise TypeError(
                f"load_raw(path, obj) restores a module or optimizer; {type(target).__name__} "
                "has no load_state_dict()"
            )
        value = self._read(path, weights_only)
        if isinstance(target, nn.Module):
            target.load_state_dict(value, strict=strict)
        else:
            target.load_state_dict(value)


class _Launched:
    """What ``Fabric.launch`` hands the strategy: set up this process, then run the function.

    In a process the strategy started (``ddp_spawn``), the modules among the arguments first get
    tensors of the process's own: torch sends CPU tensors to new processes in shared memory, the
    same memory in every rank, and each rank's optimizer would update the others' parameters.
    """

    def __init__(self, fabric: Fabric, function: c.Callable[..., t.Any] | None) -> None:
        self.fabric, self.function = fabric, function
        self.pid = os.getpid()

    def __call__(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if os.getpid() != self.pid:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, nn.Module):
                    _own_tensors(arg)
        self.fabric._strategy.setup_environment()
        if self.function is None:
            return None
        return self.function(self.fabric, *args, **kwargs)


def _own_tensors(module: nn.Module) -> None:
    """Give ``module``'s parameters and buffers storage of their own (the same objects, so an
    optimizer made from them still holds them)."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.data = tensor.data.clone()


# -- set-up helpers -----------------------------------------------------------------------------


def _is_base(obj: object, base: type, name: str) -> bool:
    """Whether ``obj.name`` is ``base``'s own implementation (not overridden, not patched)."""
    return getattr(getattr(obj, name, None), "__func__", None) is getattr(base, name)


def _module_hooks(module: nn.Module) -> list[str]:
    """Names of the methods of ``module`` that receive hooks: real overrides only.

    A method of the user's own classes counts unless ``nn.Module`` has that name (``forward``,
    ``train``...), so ``fabric.call("train")`` never reaches ``nn.Module.train``. From torch's
    and loopkit's own classes only declared hooks count, and defaults marked with
    :func:`loopkit.hooks.default_hook` never do.
    """
    names: list[str] = []
    seen: set[str] = set()
    for cls in type(module).__mro__:
        if cls is nn.Module or cls is object:
            continue
        library = (getattr(cls, "__module__", "") or "").split(".")[0] in ("torch", "loopkit")
        for name, value in vars(cls).items():
            if name in seen or name.startswith("_"):
                continue
            seen.add(name)
            if hasattr(nn.Module, name) or not inspect.isfunction(value):
                continue
            if library and name not in HOOKS:
                continue
            if is_default_hook(getattr(module, name, None)):
                continue
            names.append(name)
    return names


def _seed_workers(loader: t.Any, global_rank: int) -> None:
    # torch seeds each worker from the loader's base seed: the same on every rank, since every
    # rank seeded torch alike. Ranks other than zero get a worker_init_fn that mixes the rank in.
    # Rank zero is left alone, so a one-process run matches the same loop in plain PyTorch.
    if global_rank == 0 or os.environ.get(SEED_WORKERS_ENV) != "1":
        return
    if not getattr(loader, "num_workers", 0) or isinstance(loader.worker_init_fn, _WorkerSeeder):
        return
    loader.worker_init_fn = _WorkerSeeder(global_rank, loader.worker_init_fn)


class _WorkerSeeder:
    """A ``worker_init_fn`` reseeding python, numpy and torch from the worker's seed and rank.

    Picklable (workers may be spawned). Runs the user's own ``worker_init_fn`` afterwards.
    """

    def __init__(self, rank: int, user_fn: c.Callable[[int], t.Any] | None) -> None:
        self.rank = rank
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        seed = worker_seed(torch.initial_seed(), self.rank)
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy as np
        except ImportError:
            pass
        else:
            np.random.seed(seed % 2**32)
        if self.user_fn is not None:
            self.user_fn(worker_id)


def worker_seed(torch_seed: int, rank: int) -> int:
    """The seed a worker of ``rank`` uses, from the seed torch gave it (64 bits)."""
    digest = hashlib.blake2b(f"{torch_seed}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _save_arguments(path: t.Any, state: t.Any) -> tuple[str | os.PathLike[str], t.Any]:
    if isinstance(path, c.Mapping) and isinstance(state, (str, os.PathLike)):
        path, state = state, path  # save(state, path), as an older Fabric spelled it
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save(path, state) needs a file path first, got {type(path).__name__}")
    if not isinstance(state, c.Mapping):
        raise TypeError(
            f"save(path, state) needs a dict of named objects, got {type(state).__name__}; "
            "wrap it: fabric.save(path, {'model': model})"
        )
    return path, state


def _scalar(name: str, value: t.Any) -> t.Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"log: {name!r} is a tensor of shape {tuple(value.shape)}; loggers take scalars "
                "(reduce it first, e.g. .mean())"
            )
        return value.item()
    return value


# -- resolution (the connector) ---------------------------------------------------------------


def _env_default(key: str, value: t.Any, default: t.Any) -> t.Any:
    if value == default and not isinstance(value, bool):
        env = os.environ.get(_ENV[key])
        if env:
            return env
    return value


def _as_list(value: t.Any) -> list[t.Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _create(kind: str, name: str) -> t.Any:
    embedded = _EMBEDDED.get(kind, {}).get(name)
    if embedded is not None:
        return embedded()
    return registry().create(kind, name)


def _resolve_plugin(item: t.Any) -> t.Any:
    if isinstance(item, str):
        reg = registry()
        obj = reg.load(item) if item in reg else None
        if obj is None:
            reg.create("subscriber", item)  # raises the not-found error with advice
        kind = getattr(obj, "kind", "subscriber")
        return reg.create(kind, item)
    return item


def _resolve_accelerator(value: str | Accelerator) -> Accelerator:
    if isinstance(value, Accelerator):
        return value
    if not isinstance(value, str):
        raise TypeError(f"accelerator={value!r}: pass a name such as 'cpu', 'cuda' or 'auto'")
    name = value.lower()
    if name == "auto":
        if CUDAAccelerator.is_available():
            name = "cuda"
        elif MPSAccelerator.is_available():
            name = "mps"
        else:
            name = "cpu"
    elif name == "gpu":
        name = "mps" if MPSAccelerator.is_available() else "cuda"
    accelerator = t.cast(Accelerator, _create("accelerator", name))
    if not accelerator.is_available():
        raise RuntimeError(
            f"accelerator={value!r} is not available on this machine; use accelerator='cpu' "
            "or 'auto'"
        )
    return accelerator


def _resolve_precision(value: str | int | Precision | None) -> Precision:
    if isinstance(value, Precision):
        return value
    if value is None:
        value = "32-true"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"precision={value!r}: pass a name such as '32-true' or 'bf16-mixed'")
    name = str(value)
    if name == "32":
        name = "32-true"
    return t.cast(Precision, _create("precision", name))


def _resolve_strategy(
    value: str | Strategy, accelerator: Accelerator, n_devices: int, num_nodes: int
) -> Strategy:
    if isinstance(value, Strategy):
        return value
    if not isinstance(value, str):
        raise TypeError(f"strategy={value!r}: pass a name such as 'auto', 'ddp' or an instance")
    name = value.lower()
    if name == "auto":
        default = getattr(accelerator, "default_strategy", None)
        if default is not None:
            name = default
        elif n_devices > 1 or num_nodes > 1:
            name = "ddp"
        else:
            return SingleDeviceStrategy()
    if name == "single_device" and (n_devices > 1 or num_nodes > 1):
        raise ValueError(
            f"strategy='single_device' runs one process, but devices={n_devices} and "
            f"num_nodes={num_nodes} ask for more; use strategy='ddp' or devices=1"
        )
    return t.cast(Strategy, _create("strategy", name))


def _resolve_checkpoint_io(value: t.Any) -> CheckpointIO | None:
    if value is None:
        return None
    for method in ("save_checkpoint", "load_checkpoint"):
        if not callable(getattr(value, method, None)):
            raise TypeError(
                f"checkpoint_io plugin {value!r} has no {method}(); subclass "
                "loopkit.checkpoint.CheckpointIO"
            )
    return t.cast(CheckpointIO, value)


def _resolve_logger(value: t.Any) -> t.Any:
    if isinstance(value, str):
        return registry().create("logger", value)
    if not callable(getattr(value, "log_metrics", None)):
        raise TypeError(
            f"loggers= got {value!r}, which has no log_metrics(metrics, step) method; pass a "
            "logger object or a logger plugin name such as 'tensorboard'"
        )
    return value


def _map_tensors(data: t.Any, fn: c.Callable[[torch.Tensor], torch.Tensor]) -> t.Any:
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, dict):
        return {k: _map_tensors(v, fn) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_map_tensors(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_map_tensors(v, fn) for v in data)
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return fn(torch.tensor(data))
    return data


def _with_distributed_sampler(loader: t.Any, kwargs: dict[str, t.Any]) -> t.Any:
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_sampler is not None and type(loader.batch_sampler).__name__ != "BatchSampler":
        raise ValueError(
            f"setup_dataloaders() cannot shard a DataLoader with a custom batch_sampler "
            f"({type(loader.batch_sampler).__name__}); pass use_distributed_sampler=False and "
            "shard it yourself"
        )
    shuffle = isinstance(loader.sampler, RandomSampler)
    seed = int(os.environ.get(SEED_ENV, 0))
    sampler: DistributedSampler[t.Any] = DistributedSampler(
        loader.dataset, shuffle=shuffle, seed=seed, **kwargs
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
        persistent_workers=loader.persistent_workers,
    )
