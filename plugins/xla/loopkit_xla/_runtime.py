"""The narrow seam between loopkit-xla and torch_xla: every call into torch_xla goes through here.

The strategies and the accelerator ask an :class:`XLARuntime` for topology (world size, ordinals,
device counts), graph cuts, collectives, launching and device loaders, and never import torch_xla
themselves. Tests hand them a fake runtime to exercise the multi-replica logic (ranks, the
master ordinal, samplers, gradient reduction) on a machine where replicas cannot run.

Importing this module imports neither torch_xla nor torch: torch_xla is imported on the first
call that needs it, so that ``Fabric(strategy="xla")`` without torch_xla installed can say what
to install instead of failing at import.
"""

from __future__ import annotations

import collections.abc as c
import importlib.util
import os
import typing as t

if t.TYPE_CHECKING:
    import torch

__all__ = ["XLARuntime", "default_runtime", "require_torch_xla"]

_ReduceOp = t.Literal["sum", "mean", "max", "min"]

#: Environment variables through which PJRT limits the devices of each type on a host.
_NUM_DEVICES_ENV = {"CPU": "CPU_NUM_DEVICES", "CUDA": "GPU_NUM_DEVICES", "GPU": "GPU_NUM_DEVICES"}


def require_torch_xla(what: str) -> None:
    """Raise a clear ImportError when torch_xla cannot be imported; ``what`` is the user's ask."""
    if importlib.util.find_spec("torch_xla") is None:
        raise ImportError(
            f"{what} needs torch_xla, which is not installed in this environment. Install the "
            "torch_xla release that matches your torch (torch_xla 2.9 needs torch 2.9): "
            "pip install torch==2.9.0 torch_xla==2.9.0"
        )


class XLARuntime:
    """What loopkit-xla asks of torch_xla's PJRT runtime, one method per question.

    Every method imports torch_xla lazily. Methods that would start the runtime say so: the
    runtime must not start in a process that later spawns replicas (PJRT refuses to spawn then).
    """

    # -- availability and topology ----------------------------------------------------------

    def available(self) -> bool:
        """Whether torch_xla can be imported (PJRT falls back to the CPU without a TPU)."""
        return importlib.util.find_spec("torch_xla") is not None

    def device_type(self) -> str:
        """The PJRT device type: ``"TPU"``, ``"CPU"``, ``"CUDA"``, ``"NEURON"``... (from
        ``PJRT_DEVICE``, which torch_xla sets at import when it is unset: TPU when one is
        attached, else CPU)."""
        import torch_xla.runtime as xr  # importing torch_xla sets PJRT_DEVICE when unset

        kind = xr.device_type() or "CPU"
        return str(kind)

    def initialized(self) -> bool:
        """Whether the PJRT client of this process has started."""
        import torch_xla

        return bool(torch_xla._XLAC._xla_runtime_is_initialized())

    def device_count(self) -> int:
        """Devices on this host, without starting the runtime where that can be avoided.

        A TPU host is counted from its PCI devices, CPU and GPU hosts from ``CPU_NUM_DEVICES``
        / ``GPU_NUM_DEVICES`` (the variables PJRT itself reads); otherwise, or once the runtime
        has started, the runtime is asked.
        """
        if self.initialized():
            return self._addressable_count()
        kind = self.device_type()
        if kind == "TPU":
            from torch_xla._internal import tpu

            return int(tpu.num_available_devices())
        env = _NUM_DEVICES_ENV.get(kind)
        if env is not None:
            value = os.environ.get(env, "").strip()
            if value.isdigit():
                return int(value)
            if kind == "CPU":
                return 1  # PJRT's CPU client has one device unless CPU_NUM_DEVICES says more
        return self._addressable_count()

    def _addressable_count(self) -> int:
        import torch_xla.runtime as xr

        if xr.is_spmd():
            return int(xr.addressable_runtime_device_count())
        return int(xr.addressable_device_count()) * int(xr.local_process_count())

    def global_device_count(self) -> int:
        """Every runtime device of the run (all hosts); starts the runtime."""
        import torch_xla.runtime as xr

        return int(xr.global_runtime_device_count())

    def device(self, index: int | None = None) -> torch.device:
        """This replica's device (``index``: one of this process's devices); starts the runtime."""
        import torch_xla

        return t.cast("torch.device", torch_xla.device(index))

    def world_size(self) -> int:
        """How many replicas take part (1 outside a multi-replica launch)."""
        import torch_xla.runtime as xr

        return int(xr.world_size())

    def global_ordinal(self) -> int:
        """This replica's index among all replicas."""
        import torch_xla.runtime as xr

        return int(xr.global_ordinal())

    def local_ordinal(self) -> int:
        """This replica's index among the replicas of its host."""
        import torch_xla.runtime as xr

        return int(xr.local_ordinal())

    def host_index(self) -> int:
        """This host's index among the hosts of the run."""
        import torch_xla.runtime as xr

        return int(xr.host_index())

    def replicas_in_process(self) -> int:
        """How many replicas this process runs (more than one: as threads, CPU and TPU v2/v3)."""
        import torch_xla.runtime as xr

        return int(xr.addressable_device_count())

    # -- the graph --------------------------------------------------------------------------

    def sync(self) -> None:
        """Cut the lazy graph here: compile it (once per distinct graph) and run it."""
        import torch_xla

        torch_xla.sync()
        # A device loader cuts the graph before each batch unless a step was cut already; the
        # flag is how torch_xla's own step tracer tells it so.
        import torch_xla.debug.profiler as xp

        xp.set_tracer_marked_step(True)

    def wait(self) -> None:
        """Block until every pending device operation has finished."""
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()

    # -- collectives ------------------------------------------------------------------------

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of ``optimizer``'s parameters across replicas."""
        import torch_xla.core.xla_model as xm

        xm.reduce_gradients(optimizer)

    def all_reduce(self, tensor: torch.Tensor, op: _ReduceOp) -> torch.Tensor:
        """``tensor`` reduced across replicas with ``op`` (a new tensor)."""
        import torch_xla.core.xla_model as xm

        if op == "mean":
            return t.cast("torch.Tensor", xm.all_reduce(xm.REDUCE_SUM, tensor)) / self.world_size()
        kinds = {"sum": xm.REDUCE_SUM, "max": xm.REDUCE_MAX, "min": xm.REDUCE_MIN}
        return t.cast("torch.Tensor", xm.all_reduce(kinds[op], tensor))

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every replica's ``tensor`` concatenated along dimension 0, in ordinal order."""
        import torch_xla.core.xla_model as xm

        return t.cast("torch.Tensor", xm.all_gather(tensor, dim=0))

    def rendezvous(self, tag: str, payload: bytes = b"") -> list[bytes]:
        """Wait for every replica at ``tag``; returns each replica's ``payload`` by ordinal."""
        import torch_xla.core.xla_model as xm

        return list(xm.rendezvous(tag, payload))

    # -- processes and data -----------------------------------------------------------------

    def launch(
        self, fn: c.Callable[..., t.Any], args: tuple[t.Any, ...], start_method: str
    ) -> None:
        """Start one replica per device of this host: ``fn(index, *args)`` in each."""
        import torch_xla

        torch_xla.launch(fn, args=args, start_method=start_method)

    def device_loader(self, loader: t.Any, device: torch.device) -> t.Any:
        """``loader`` wrapped to move batches to ``device`` in background threads."""
        from torch_xla.distributed.parallel_loader import MpDeviceLoader

        return MpDeviceLoader(loader, device)

    # -- SPMD -------------------------------------------------------------------------------

    def use_spmd(self) -> None:
        """Switch this process to SPMD: one virtual device over every device of the host."""
        import torch_xla.runtime as xr

        if not xr.is_spmd():
            xr.use_spmd()

    def data_mesh(self, n_devices: int) -> t.Any:
        """A one-axis mesh named ``"data"`` over ``n_devices`` devices."""
        import numpy as np
        import torch_xla.distributed.spmd as xs

        return xs.Mesh(np.arange(n_devices), (n_devices,), ("data",))

    def shard_batch(self, tensor: torch.Tensor, device: torch.device, mesh: t.Any) -> torch.Tensor:
        """Send ``tensor`` to ``device`` split along dimension 0 over ``mesh``'s data axis."""
        import torch_xla.core.xla_model as xm
        import torch_xla.distributed.spmd as xs

        spec = xs.ShardingSpec(mesh, ("data",) + (None,) * (tensor.dim() - 1))
        return t.cast("torch.Tensor", xm.send_cpu_data_to_device([tensor], device, spec)[0])

    def mark_batch_sharding(self, tensor: torch.Tensor, mesh: t.Any) -> None:
        """Annotate an XLA ``tensor`` as split along dimension 0 over ``mesh``'s data axis."""
        import torch_xla.distributed.spmd as xs

        xs.mark_sharding(tensor, mesh, ("data",) + (None,) * (tensor.dim() - 1))


_DEFAULT: XLARuntime | None = None


def default_runtime() -> XLARuntime:
    """The process-wide runtime (torch_xla itself)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = XLARuntime()
    return _DEFAULT
