"""The strategy slot: where the model lives, how steps run, and how processes talk.

The kernel embeds :class:`SingleDeviceStrategy` (one process, one device); ``ddp``, ``fsdp`` and
``xla`` come from plugins. A strategy owns device placement, the backward and optimizer step
(delegating dtype matters to the precision), collectives, gradient-sync control and where
checkpoints are written. It never decides *when* anything happens: that is the loop's business.
"""

from __future__ import annotations

import collections
import collections.abc as c
import contextlib
import copy
import dataclasses
import typing as t
from pathlib import Path

import torch

from loopkit import checkpoint as _ckpt
from loopkit.accelerator import Accelerator, CPUAccelerator
from loopkit.plugins import Plugin
from loopkit.precision import Precision

__all__ = ["SingleDeviceStrategy", "Strategy", "move_to_device"]

_Op = t.Literal["sum", "mean", "max", "min"]


def move_to_device(obj: t.Any, device: torch.device) -> t.Any:
    """Move every tensor in ``obj`` to ``device``, rebuilding the collections that hold them.

    Understood: tensors, modules (moved in place), dicts and other mappings (``defaultdict``
    keeps its factory), lists, tuples, named tuples, sets, dataclass instances, and any other
    object with a ``to(device)`` method (a ``BatchEncoding``, say). Everything else is returned
    as it is.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.nn.Module):
        return obj.to(device)
    if isinstance(obj, collections.defaultdict):
        moved: collections.defaultdict[t.Any, t.Any] = collections.defaultdict(obj.default_factory)
        moved.update((k, move_to_device(v, device)) for k, v in obj.items())
        return moved
    if isinstance(obj, c.Mapping):
        items = [(k, move_to_device(v, device)) for k, v in obj.items()]
        try:
            return type(obj)(items)  # type: ignore[call-arg]
        except TypeError:
            return dict(items)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple, set, frozenset)):
        return type(obj)(move_to_device(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        clone = copy.copy(obj)
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            new = move_to_device(value, device)
            if new is not value:
                object.__setattr__(clone, field.name, new)  # frozen dataclasses too
        return clone
    to = getattr(obj, "to", None)
    if callable(to) and not isinstance(obj, type):
        return to(device)
    return obj


class Strategy(Plugin):
    """Base of every strategy. Subclasses override what differs from one process on one device."""

    kind = "strategy"
    #: Whether every process holds a full replica (checkpoints are then written by rank zero).
    replicated: t.ClassVar[bool] = True
    #: Whether ``no_backward_sync`` can actually suppress gradient synchronisation.
    supports_no_sync: t.ClassVar[bool] = True

    def __init__(self) -> None:
        self.accelerator: Accelerator = CPUAccelerator()
        self.precision: Precision = Precision()
        self.parallel_devices: list[torch.device] = [torch.device("cpu")]
        self.num_nodes = 1

    # -- wiring -----------------------------------------------------------------------------

    def connect(
        self,
        accelerator: Accelerator,
        precision: Precision,
        devices: list[int],
        num_nodes: int,
    ) -> None:
        """Receive what the connector resolved. Called once, before :meth:`setup_environment`."""
        self.accelerator = accelerator
        self.precision = precision
        self.parallel_devices = [accelerator.device(i) for i in devices]
        self.num_nodes = num_nodes

    def setup_environment(self) -> None:
        """Prepare this process (device selection, process groups). Called by ``launch``."""
        self.accelerator.setup_device(self.root_device)

    def launch(self, fn: c.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
        """Run ``fn`` in every process of the run and return this process's result."""
        return fn(*args, **kwargs)

    @property
    def launched(self) -> bool:
        """Whether the processes of the run exist (no launch is needed or it has happened)."""
        return True

    def teardown(self) -> None:
        """Release what :meth:`setup_environment` acquired."""

    # -- topology ---------------------------------------------------------------------------

    @property
    def root_device(self) -> torch.device:
        return self.parallel_devices[0]

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    # -- modules, optimizers, data ----------------------------------------------------------

    def module_init_context(self) -> contextlib.AbstractContextManager[t.Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.module_init_context())
        return stack

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Return the module to run forward on (a parallel wrapper, or ``module`` itself)."""
        return module

    def module_to_device(self, module: torch.nn.Module) -> None:
        module.to(self.root_device)

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def distributed_sampler_kwargs(self) -> dict[str, t.Any] | None:
        """``num_replicas``/``rank`` for a ``DistributedSampler``, or None when not sharding."""
        return None

    def process_dataloader(self, dataloader: t.Any) -> t.Any:
        """What ``setup_dataloaders`` iterates instead of ``dataloader``: itself here; a strategy
        may wrap it (in a loader that moves batches in background threads, say), keeping the
        original's attributes (``sampler``, ``dataset``) reachable on the wrapper."""
        return dataloader

    def batch_to_device(self, batch: t.Any, device: torch.device | None = None) -> t.Any:
        return move_to_device(batch, device or self.root_device)

    # -- the step ---------------------------------------------------------------------------

    def backward(
        self, loss: torch.Tensor, module: torch.nn.Module | None, *args: t.Any, **kwargs: t.Any
    ) -> None:
        loss = self.precision.pre_backward(loss, module)
        self.precision.backward(loss, module, *args, **kwargs)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: c.Callable[[], t.Any] | None = None,
        **kwargs: t.Any,
    ) -> t.Any:
        return self.precision.optimizer_step(optimizer, closure, **kwargs)

    def no_backward_sync(
        self, module: torch.nn.Module, enabled: bool = True
    ) -> contextlib.AbstractContextManager[t.Any]:
        """Suppress gradient synchronisation inside the block (nothing to do on one device)."""
        return contextlib.nullcontext()

    def clip_gradients_norm(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        self.precision.unscale_gradients(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(
            params, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def clip_gradients_value(
        self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_val: float
    ) -> None:
        self.precision.unscale_gradients(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(params, clip_val)

    # -- collectives (identity on one process) -----------------------------------------------

    def barrier(self, name: str | None = None) -> None:
        pass

    def broadcast(self, obj: t.Any, src: int = 0) -> t.Any:
        return obj

    def all_gather(self, data: torch.Tensor, sync_grads: bool = False) -> torch.Tensor:
        """Stack each process's ``data`` along a new first dimension (size ``world_size``)."""
        return data.unsqueeze(0)

    def all_reduce(self, data: torch.Tensor, reduce_op: _Op = "mean") -> torch.Tensor:
        return data

    # -- checkpoints ------------------------------------------------------------------------

    def module_state_dict(self, module: torch.nn.Module) -> dict[str, t.Any]:
        return module.state_dict()

    def save_checkpoint(self, path: str | Path, state: dict[str, t.Any]) -> None:
        """Write ``state`` to ``path`` atomically; replicated strategies write on rank zero."""
        if self.is_global_zero or not self.replicated:
            _ckpt.atomic_save(state, path)

    def load_checkpoint(self, path: str | Path, weights_only: bool = True) -> dict[str, t.Any]:
        return t.cast(
            dict[str, t.Any],
            _ckpt.safe_load(path, weights_only=weights_only, map_location=self.root_device),
        )


class SingleDeviceStrategy(Strategy):
    """One process on one device: ``cpu``, ``cuda:N`` or ``mps``."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        super().__init__()
        self._device = torch.device(device) if device is not None else None

    def connect(
        self,
        accelerator: Accelerator,
        precision: Precision,
        devices: list[int],
        num_nodes: int,
    ) -> None:
        super().connect(accelerator, precision, devices[:1] or [0], num_nodes)
        if self._device is not None:
            self.parallel_devices = [self._device]
