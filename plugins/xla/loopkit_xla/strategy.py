"""The ``xla`` and ``xla_spmd`` strategies: training on XLA devices through torch_xla's PJRT.

``xla`` runs one replica per device (``torch_xla.launch``); gradients are averaged across
replicas in the optimizer step, the lazy graph is cut once per optimizer step so that every
step replays the same compiled program, batches reach the device through ``MpDeviceLoader``,
and checkpoints are moved to the CPU and written by the master ordinal only.

``xla_spmd`` runs one process over every device of the host: parameters are replicated, each
batch is split along its first dimension over a one-axis ``"data"`` mesh, and the XLA SPMD
partitioner inserts the gradient reduction itself, so user code makes no collective call.

Neither imports torch_xla at import time; every call into it goes through
:class:`loopkit_xla._runtime.XLARuntime`.
"""

from __future__ import annotations

import collections.abc as c
import pickle
import typing as t
import weakref
from pathlib import Path

import torch

from loopkit import checkpoint as _ckpt
from loopkit.accelerator import Accelerator
from loopkit.precision import Precision
from loopkit.strategy import Strategy, move_to_device
from loopkit_xla._runtime import XLARuntime, default_runtime, require_torch_xla
from loopkit_xla.accelerator import XLAAccelerator

__all__ = ["XLASPMDStrategy", "XLAStrategy"]

_Op = t.Literal["sum", "mean", "max", "min"]
_CPU = torch.device("cpu")


class _XLABase(Strategy):
    """What both XLA strategies share: the device, the graph cut per step, checkpoints."""

    #: The name users pass; set by each subclass (used in messages).
    _name: t.ClassVar[str] = "xla"
    # XLA reduces gradients once per optimizer step (``xla``) or inside the compiled graph
    # (``xla_spmd``), never per backward, so there is nothing for no_backward_sync to skip:
    # Fabric warns once and runs the block unchanged.
    supports_no_sync = False

    def __init__(self, runtime: XLARuntime | None = None) -> None:
        super().__init__()
        #: Given explicitly (tests); otherwise the accelerator's, adopted in connect.
        self._own_runtime = runtime
        self.runtime = runtime if runtime is not None else default_runtime()
        self.parallel_devices = [torch.device("xla", 0)]
        self._device: torch.device | None = None
        #: id(CPU parameter) -> (weak reference to it, the parameter it became on the device).
        self._moved: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}

    def connect(
        self,
        accelerator: Accelerator,
        precision: Precision,
        devices: list[int],
        num_nodes: int,
    ) -> None:
        if not isinstance(accelerator, XLAAccelerator):
            if self._own_runtime is None:
                require_torch_xla(f"strategy={self._name!r}")
            raise ValueError(
                f"strategy={self._name!r} runs on XLA devices, but the accelerator is "
                f"{accelerator.device_type!r} ({type(accelerator).__name__}); pass "
                f"accelerator='xla' (or 'tpu'), e.g. Fabric(accelerator='xla', "
                f"strategy={self._name!r})"
            )
        if self._own_runtime is None:
            self.runtime = accelerator.runtime
        super().connect(accelerator, precision, devices, num_nodes)

    # -- topology ---------------------------------------------------------------------------

    @property
    def root_device(self) -> torch.device:
        # Before the environment is set up this is the planned device: its type is right (the
        # precision learns "xla" from it) and asking the runtime here would start it too early.
        if self._device is not None:
            return self._device
        return self.parallel_devices[0]

    # -- modules and data -------------------------------------------------------------------

    def module_to_device(self, module: torch.nn.Module) -> None:
        # Moving to an XLA device makes new Parameter objects (a CPU tensor cannot become an
        # XLA tensor in place), so optimizers built on the CPU parameters are rebound in
        # setup_optimizer. Weak references: a parameter that is gone cannot be looked up again.
        before = list(module.parameters())
        module.to(self.root_device)
        for old, new in zip(before, module.parameters()):
            if old is not new:
                self._moved[id(old)] = (weakref.ref(old), new)

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``optimizer`` at the parameters its module got on the device (and its state)."""
        moved = self._moved

        def on_device(param: torch.Tensor) -> torch.Tensor:
            entry = moved.get(id(param))
            if entry is not None and entry[0]() is param:
                return entry[1]
            return param

        for group in optimizer.param_groups:
            group["params"] = [on_device(p) for p in group["params"]]
        if optimizer.state:
            state = {on_device(p): v for p, v in optimizer.state.items()}
            optimizer.state.clear()
            optimizer.state.update(move_to_device(state, self.root_device))
        return optimizer

    def process_dataloader(self, dataloader: t.Any) -> t.Any:
        """Batches come through torch_xla's ``MpDeviceLoader`` (moved in background threads)."""
        return _DeviceLoader(dataloader, self.runtime, self.root_device)

    # -- the step ---------------------------------------------------------------------------

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: c.Callable[[], t.Any] | None = None,
        **kwargs: t.Any,
    ) -> t.Any:
        out = self.precision.optimizer_step(optimizer, closure, **kwargs)
        # The graph cut: everything traced since the last cut (forward, backward, the update)
        # becomes one program, compiled the first time and replayed on every later step.
        self.runtime.sync()
        return out

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path, state: dict[str, t.Any]) -> None:
        """Move ``state`` to the CPU on every replica; the master ordinal writes it atomically.

        Every replica materialises the same tensors, so that no replica runs a program the
        others do not (a pending collective would otherwise wait forever).
        """
        cpu_state = move_to_device(state, _CPU)
        if self.is_global_zero:
            _ckpt.atomic_save(cpu_state, path)

    def load_checkpoint(self, path: str | Path, weights_only: bool = True) -> dict[str, t.Any]:
        # Read to the CPU; load_state_dict copies into the XLA parameters and optimizer state.
        return t.cast(
            dict[str, t.Any], _ckpt.safe_load(path, weights_only=weights_only, map_location="cpu")
        )


class XLAStrategy(_XLABase):
    """``strategy="xla"``: one replica per XLA device, started by ``fabric.launch``.

    With ``devices=1`` the run stays in this process on one device. With every device of the
    host, ``fabric.launch(fn)`` starts one replica per device through ``torch_xla.launch`` and
    returns the master ordinal's result. ``start_method`` is how replica processes start:
    ``"fork"`` (the default; the function may be a lambda or a closure) or ``"spawn"`` (the
    function and its arguments are pickled).

    Gradients are averaged across replicas once per optimizer step (after a closure ran, or
    earlier when gradients are clipped, so that clipping sees the averaged gradients).
    """

    _name = "xla"
    provides: t.ClassVar[c.Mapping[str, c.Callable[..., t.Any]]] = {"accelerator": XLAAccelerator}

    def __init__(self, start_method: str = "fork", runtime: XLARuntime | None = None) -> None:
        if start_method not in ("fork", "spawn", "forkserver"):
            raise ValueError(
                f"start_method={start_method!r}: use 'fork' (the default) or 'spawn'"
            )
        super().__init__(runtime)
        self.start_method = start_method
        self._in_replica = False
        self._topology = (0, 0, 0, 1)  # global ordinal, local ordinal, host, world size
        #: ids of the optimizers whose gradients were averaged since their last step.
        self._reduced: set[int] = set()

    # -- processes --------------------------------------------------------------------------

    @property
    def num_replicas(self) -> int:
        """How many replicas the run has on this host (the devices asked for)."""
        return len(self.parallel_devices)

    @property
    def launched(self) -> bool:
        return self._in_replica or self.num_replicas == 1

    def launch(self, fn: c.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
        if self.launched:
            return fn(*args, **kwargs)
        from loopkit_xla import launcher

        return launcher.launch_replicas(self, fn, args, kwargs)

    def _enter_replica(self) -> None:
        """Called first in every replica started by :meth:`launch`."""
        self._in_replica = True

    def setup_environment(self) -> None:
        if self._device is not None:
            return
        if not self.launched:
            raise RuntimeError(
                f"strategy='xla' with devices={self.num_replicas} runs one replica per device: "
                "put the training in a function and call fabric.launch(train) (it receives the "
                "fabric first), or use devices=1, or strategy='xla_spmd' (one process over "
                "every device)"
            )
        rt = self.runtime
        if self._in_replica:
            threads = rt.replicas_in_process()
            if threads > 1:
                raise RuntimeError(
                    f"this process runs {threads} XLA replicas as threads (PJRT does so on the "
                    f"CPU and on TPU v2/v3), but strategy='xla' keeps one Fabric per process; "
                    "use strategy='xla_spmd' there"
                )
            self._device = rt.device()
            self._topology = (
                rt.global_ordinal(), rt.local_ordinal(), rt.host_index(), rt.world_size()
            )  # fmt: skip
        else:
            index = self.parallel_devices[0].index
            self._device = rt.device(index if index else None)

    @property
    def global_rank(self) -> int:
        return self._topology[0]

    @property
    def local_rank(self) -> int:
        return self._topology[1]

    @property
    def node_rank(self) -> int:
        return self._topology[2]

    @property
    def world_size(self) -> int:
        return self._topology[3]

    def distributed_sampler_kwargs(self) -> dict[str, t.Any] | None:
        if self.world_size == 1:
            return None
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # -- the step ---------------------------------------------------------------------------

    def _reduce_once(self, optimizer: torch.optim.Optimizer) -> None:
        """Average ``optimizer``'s gradients across replicas, once per optimizer step."""
        if self.world_size > 1 and id(optimizer) not in self._reduced:
            self._reduced.add(id(optimizer))
            self.runtime.reduce_gradients(optimizer)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: c.Callable[[], t.Any] | None = None,
        **kwargs: t.Any,
    ) -> t.Any:
        if self.world_size > 1:
            if closure is not None:
                closure = _ReduceAfter(self, optimizer, closure)
            else:
                self._reduce_once(optimizer)
        try:
            return super().optimizer_step(optimizer, closure, **kwargs)
        finally:
            self._reduced.discard(id(optimizer))

    def clip_gradients_norm(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        self._reduce_once(optimizer)  # clip what every replica will apply
        # A non-finite check would read the norm back to the host in the middle of the step;
        # XLA computes the clipping lazily instead, and an inf or nan norm makes the update
        # non-finite, which the next read of the loss shows.
        return super().clip_gradients_norm(
            module, optimizer, max_norm, norm_type=norm_type, error_if_nonfinite=False
        )

    def clip_gradients_value(
        self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_val: float
    ) -> None:
        self._reduce_once(optimizer)
        super().clip_gradients_value(module, optimizer, clip_val)

    # -- collectives ------------------------------------------------------------------------

    def barrier(self, name: str | None = None) -> None:
        if self.world_size > 1:
            self.runtime.rendezvous(f"loopkit.barrier.{name or ''}")

    def broadcast(self, obj: t.Any, src: int = 0) -> t.Any:
        if self.world_size == 1:
            return obj
        payload = pickle.dumps(move_to_device(obj, _CPU)) if self.global_rank == src else b""
        parts = self.runtime.rendezvous("loopkit.broadcast", payload)
        return move_to_device(pickle.loads(parts[src]), self.root_device)

    def all_gather(self, data: torch.Tensor, sync_grads: bool = False) -> torch.Tensor:
        data = data.to(self.root_device)
        if self.world_size == 1:
            return data.unsqueeze(0)
        return self.runtime.all_gather(data.unsqueeze(0))

    def all_reduce(self, data: torch.Tensor, reduce_op: _Op = "mean") -> torch.Tensor:
        if self.world_size == 1:
            return data
        if not data.is_floating_point() and reduce_op == "mean":
            data = data.float()
        return self.runtime.all_reduce(data.to(self.root_device), reduce_op)

    def __getstate__(self) -> dict[str, t.Any]:
        state = dict(self.__dict__)
        state["_reduced"] = set()
        return state


class _ReduceAfter:
    """A step closure that averages the gradients it computed before the optimizer reads them."""

    def __init__(
        self,
        strategy: XLAStrategy,
        optimizer: torch.optim.Optimizer,
        closure: c.Callable[[], t.Any],
    ) -> None:
        self.strategy, self.optimizer, self.closure = strategy, optimizer, closure

    def __call__(self) -> t.Any:
        result = self.closure()
        self.strategy._reduce_once(self.optimizer)
        return result


class XLASPMDStrategy(_XLABase):
    """``strategy="xla_spmd"``: data parallel over every device of the host, in one process.

    Parameters are replicated on every device; each batch tensor is split along its first
    dimension over a one-axis mesh named ``"data"`` (a batch dimension that the device count
    does not divide is replicated instead). The SPMD partitioner turns the single-device
    program into a per-device one and inserts the gradient reduction, so results match one
    device training on the whole batch. ``world_size`` is 1: one process, no collectives.
    """

    _name = "xla_spmd"

    def __init__(self, runtime: XLARuntime | None = None) -> None:
        super().__init__(runtime)
        self.mesh: t.Any = None
        self.num_devices = 0

    def connect(
        self,
        accelerator: Accelerator,
        precision: Precision,
        devices: list[int],
        num_nodes: int,
    ) -> None:
        super().connect(accelerator, precision, devices, num_nodes)
        count = accelerator.auto_device_count()
        if len(devices) != count:
            raise ValueError(
                f"strategy='xla_spmd' spans every device of the host ({count} here), but "
                f"devices={devices} asks for {len(devices)}; pass devices='auto' (or -1)"
            )
        self.parallel_devices = [torch.device("xla", 0)]  # one virtual device over all
        self.num_devices = count

    def setup_environment(self) -> None:
        if self._device is not None:
            return
        rt = self.runtime
        rt.use_spmd()
        self._device = rt.device()
        self.num_devices = rt.global_device_count()
        self.mesh = rt.data_mesh(self.num_devices)

    def process_dataloader(self, dataloader: t.Any) -> t.Any:
        """Batches are split over the mesh as they are sent, straight from the CPU."""
        return _ShardingLoader(dataloader, self)

    def batch_to_device(self, batch: t.Any, device: torch.device | None = None) -> t.Any:
        """Send the batch's CPU tensors to the device, split along dimension 0 over the mesh."""
        device = device or self.root_device
        if self.mesh is None:
            return move_to_device(batch, device)
        return _map_cpu_tensors(batch, lambda x: self._send(x, device))

    def _send(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        if tensor.dim() >= 1 and tensor.shape[0] % self.num_devices == 0:
            return self.runtime.shard_batch(tensor, device, self.mesh)
        return tensor.to(device)


def _map_cpu_tensors(data: t.Any, fn: c.Callable[[torch.Tensor], torch.Tensor]) -> t.Any:
    # Containers are rebuilt the way loopkit.strategy.move_to_device rebuilds them; tensors
    # already on a device and other objects are left to move_to_device.
    if isinstance(data, torch.Tensor):
        return fn(data) if data.device.type == "cpu" else data
    if isinstance(data, dict):
        items = [(k, _map_cpu_tensors(v, fn)) for k, v in data.items()]
        try:
            return type(data)(items)
        except TypeError:  # a dict subclass with another constructor
            return dict(items)
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_map_cpu_tensors(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_map_cpu_tensors(v, fn) for v in data)
    return data


class _LoaderProxy:
    """A wrapped dataloader: other attributes are the original's (its sampler, dataset, batch
    size), so that Fabric still sets sampler epochs."""

    def __init__(self, dataloader: t.Any) -> None:
        self.dataloader = dataloader

    def __len__(self) -> int:
        return len(self.dataloader)

    def __getattr__(self, name: str) -> t.Any:
        try:
            loader = self.__dict__["dataloader"]
        except KeyError:  # during copy/unpickling
            raise AttributeError(name) from None
        return getattr(loader, name)


class _ShardingLoader(_LoaderProxy):
    """Sends each batch to the device split over the SPMD mesh (``batch_to_device``)."""

    def __init__(self, dataloader: t.Any, strategy: XLASPMDStrategy) -> None:
        super().__init__(dataloader)
        self._strategy = strategy

    def __iter__(self) -> c.Iterator[t.Any]:
        send = self._strategy.batch_to_device
        for batch in self.dataloader:
            yield send(batch)

    def __repr__(self) -> str:
        return f"ShardingLoader({self.dataloader!r})"


class _DeviceLoader(_LoaderProxy):
    """Iterated through torch_xla's ``MpDeviceLoader``: batches move in background threads."""

    def __init__(self, dataloader: t.Any, runtime: XLARuntime, device: torch.device) -> None:
        super().__init__(dataloader)
        self._runtime = runtime
        self._device = device

    def __iter__(self) -> c.Iterator[t.Any]:
        return iter(self._runtime.device_loader(self.dataloader, self._device))

    def __repr__(self) -> str:
        return f"MpDeviceLoader({self.dataloader!r})"
