"""``ddp`` and ``ddp_spawn``: one replica per process, gradients averaged by DDP.

Processes come from a launcher (torchrun, ``loopkit run``, SLURM's srun) or, without one, from
the strategy itself: ``ddp`` re-runs the script for local ranks 1..N-1 the first time the
process is set up (``fabric.launch()`` or the first ``fabric.setup*`` call), ``ddp_spawn`` runs
the function given to ``fabric.launch(fn)`` in N new processes.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
import typing as t
import warnings

import torch
import torch.distributed as dist

from loopkit.strategy import Strategy
from loopkit_ddp import launchers
from loopkit_ddp.environments import (
    ClusterEnvironment,
    LocalEnvironment,
    TorchElasticEnvironment,
    detect_environment,
)

if t.TYPE_CHECKING:
    import collections.abc as c

    from loopkit.accelerator import Accelerator
    from loopkit.precision import Precision

__all__ = ["DDPFindUnusedStrategy", "DDPSpawnStrategy", "DDPStrategy", "ParallelStrategy"]

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM"}
#: torch's own default for gloo and nccl process groups.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def _as_timeout(value: float | datetime.timedelta | None) -> datetime.timedelta:
    if value is None:
        env = os.environ.get("LOOPKIT_PG_TIMEOUT")
        return datetime.timedelta(seconds=float(env)) if env else DEFAULT_TIMEOUT
    if isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return datetime.timedelta(seconds=value)
    raise ValueError(f"timeout={value!r}: pass seconds (a positive number) or a datetime.timedelta")


_owned_group = False


def _destroy_owned_group() -> None:
    """Destroy the default process group if a loopkit strategy created it."""
    global _owned_group
    if _owned_group and dist.is_available() and dist.is_initialized():
        # Tensors referencing the group's work objects must go first: on gloo an abort at
        # interpreter exit is otherwise known to happen intermittently.
        gc.collect()
        dist.destroy_process_group()
    _owned_group = False


class ParallelStrategy(Strategy):
    """Several processes in one ``torch.distributed`` process group: topology and collectives.

    ``process_group_backend`` defaults to ``nccl`` on CUDA and ``gloo`` otherwise; ``timeout``
    (seconds or a ``timedelta``; default ``LOOPKIT_PG_TIMEOUT`` seconds or 30 minutes) bounds how
    long a collective waits for a rank that does not come. ``cluster_environment`` overrides
    detection (torchelastic, then SLURM, then local).
    """

    def __init__(
        self,
        process_group_backend: str | None = None,
        timeout: float | datetime.timedelta | None = None,
        cluster_environment: ClusterEnvironment | None = None,
    ) -> None:
        super().__init__()
        if process_group_backend is not None and not isinstance(process_group_backend, str):
            raise TypeError(
                f"process_group_backend={process_group_backend!r}: pass a name such as 'gloo' "
                "or 'nccl'"
            )
        self._backend = process_group_backend
        self._timeout = _as_timeout(timeout)
        self._environment = cluster_environment
        self._given_environment = cluster_environment is not None
        self._launcher: launchers.ScriptLauncher | None = None
        self._set_up = False

    # -- wiring and topology ----------------------------------------------------------------

    def connect(
        self,
        accelerator: Accelerator,
        precision: Precision,
        devices: list[int],
        num_nodes: int,
    ) -> None:
        super().connect(accelerator, precision, devices, num_nodes)
        if not self._given_environment:
            self._environment = None  # detected again, with the devices just resolved

    @property
    def cluster_environment(self) -> ClusterEnvironment:
        """Where rank and world size come from (detected on first use)."""
        if self._environment is None:
            self._environment = detect_environment(
                devices_per_node=len(self.parallel_devices), num_nodes=self.num_nodes
            )
        return self._environment

    @property
    def process_group_backend(self) -> str:
        if self._backend is not None:
            return self._backend
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    @property
    def timeout(self) -> datetime.timedelta:
        return self._timeout

    @property
    def global_rank(self) -> int:
        return self.cluster_environment.global_rank()

    @property
    def local_rank(self) -> int:
        return self.cluster_environment.local_rank()

    @property
    def node_rank(self) -> int:
        return self.cluster_environment.node_rank()

    @property
    def world_size(self) -> int:
        return self.cluster_environment.world_size()

    @property
    def root_device(self) -> torch.device:
        devices = self.parallel_devices
        if devices[0].type == "cpu":
            return devices[0]
        local = self.cluster_environment.local_rank()
        if local >= len(devices):
            raise RuntimeError(
                f"local rank {local} has no device: devices={len(devices)} on this node. Start "
                f"at most {len(devices)} processes per node, or pass devices= to match"
            )
        return devices[local]

    @property
    def launched(self) -> bool:
        env = self.cluster_environment
        return env.creates_processes_externally or self._launcher is not None or (
            self.world_size == 1
        )

    @property
    def distributed_ready(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    # -- environment ------------------------------------------------------------------------

    def setup_environment(self) -> None:
        """Start missing local ranks (``ddp``), then join the process group; idempotent."""
        if self._set_up:
            return
        self._start_processes()
        self._check_topology()
        self.accelerator.setup_device(self.root_device)
        self._init_process_group()
        self._set_up = True

    def _start_processes(self) -> None:
        """Start the local ranks a launcher would have started (nothing by default)."""

    def _check_topology(self) -> None:
        env = self.cluster_environment
        expected = len(self.parallel_devices) * self.num_nodes
        mismatch = env.creates_processes_externally and env.world_size() != expected
        if mismatch and env.global_rank() == 0:
            warnings.warn(
                f"the {env.name} environment has WORLD_SIZE={env.world_size()} processes, but "
                f"devices={len(self.parallel_devices)} x num_nodes={self.num_nodes} = "
                f"{expected}; the launcher's {env.world_size()} processes are used. Pass "
                "devices/num_nodes that match the launcher to silence this",
                UserWarning,
                stacklevel=4,
            )

    def _init_process_group(self) -> None:
        global _owned_group
        env = self.cluster_environment
        rank, world_size = env.global_rank(), env.world_size()
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this build of torch")
        if dist.is_initialized():
            # A process group made by the user (or a benchmark harness) is used as it is.
            if dist.get_world_size() != world_size or dist.get_rank() != rank:
                raise RuntimeError(
                    f"a process group exists already with rank {dist.get_rank()} of "
                    f"{dist.get_world_size()}, but the {env.name} environment says rank {rank} of "
                    f"{world_size}"
                )
            return
        if isinstance(env, TorchElasticEnvironment):
            # torchrun's agent may host the store already (TORCHELASTIC_USE_AGENT_STORE):
            # only env:// knows to join it.
            init_method = "env://"
        else:
            # Passed explicitly rather than through os.environ, which stays untouched.
            host = env.main_address
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host
            init_method = f"tcp://{host}:{env.main_port}"
        dist.init_process_group(
            self.process_group_backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=self._timeout,
        )
        # After init_process_group, which wraps sys.excepthook: ours must be outermost.
        launchers.install_worker_hooks(rank)
        if self._launcher is not None:
            self._launcher.install_excepthook()
        if not _owned_group:
            atexit.register(_destroy_owned_group)
        _owned_group = True

    def teardown(self) -> None:
        """Destroy the process group this strategy created (garbage collected first)."""
        _destroy_owned_group()
        self._set_up = False

    # -- data -------------------------------------------------------------------------------

    def distributed_sampler_kwargs(self) -> dict[str, t.Any] | None:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # -- collectives ------------------------------------------------------------------------

    def barrier(self, name: str | None = None) -> None:
        if not self.distributed_ready:
            return
        if self.process_group_backend == "nccl" and self.root_device.type == "cuda":
            dist.barrier(device_ids=[self.root_device.index])
        else:
            dist.barrier()

    def broadcast(self, obj: t.Any, src: int = 0) -> t.Any:
        if not self.distributed_ready:
            return obj
        box = [obj]
        device = self.root_device if self.process_group_backend == "nccl" else None
        dist.broadcast_object_list(box, src=src, device=device)
        return box[0]

    def all_gather(self, data: torch.Tensor, sync_grads: bool = False) -> torch.Tensor:
        if not self.distributed_ready:
            return data.unsqueeze(0)
        data = data.contiguous()
        if sync_grads:
            from torch.distributed.nn.functional import all_gather

            return torch.stack(all_gather(data))
        parts = [torch.empty_like(data) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, data)
        return torch.stack(parts)

    def all_reduce(self, data: torch.Tensor, reduce_op: t.Any = "mean") -> torch.Tensor:
        if reduce_op not in _OPS:
            raise ValueError(
                f"reduce_op={reduce_op!r} is not supported; use one of {', '.join(_OPS)}"
            )
        if not self.distributed_ready:
            return data
        out = data.clone()
        dist.all_reduce(out, op=getattr(dist.ReduceOp, _OPS[reduce_op]))
        if reduce_op == "mean":
            out = out / dist.get_world_size()
        return out


class DDPStrategy(ParallelStrategy):
    """``"ddp"``: ``torch.nn.parallel.DistributedDataParallel``, one process per device.

    Extra keyword arguments go to ``DistributedDataParallel`` (``find_unused_parameters``,
    ``bucket_cap_mb``, ``static_graph``...). The ``DistributedDataParallel`` object is
    ``fabric_module.forward_module``: register communication hooks there.

    Without a launcher, the first set-up of the process (``fabric.launch()``, or the first
    ``fabric.setup*`` call when ``launch()`` was never called) starts local ranks 1..N-1 by
    re-running the script with torchrun's variables; this process becomes local rank 0.
    """

    def __init__(
        self,
        process_group_backend: str | None = None,
        timeout: float | datetime.timedelta | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        **ddp_kwargs: t.Any,
    ) -> None:
        super().__init__(process_group_backend, timeout, cluster_environment)
        self.ddp_kwargs = ddp_kwargs
        self._forward_depths: dict[int, _ForwardDepth] = {}

    def _start_processes(self) -> None:
        env = self.cluster_environment
        if env.creates_processes_externally or self._launcher is not None:
            return
        if len(self.parallel_devices) == 1:
            return
        self._launcher = launchers.ScriptLauncher(
            devices_per_node=len(self.parallel_devices),
            node_rank=env.node_rank(),
            world_size=env.world_size(),
            main_address=env.main_address,
            main_port=env.main_port,
        )
        self._launcher.start()

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module  # DistributedDataParallel refuses modules with nothing to train
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        ddp = DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)
        depth = _ForwardDepth()
        ddp.register_forward_pre_hook(depth.enter)
        ddp.register_forward_hook(depth.leave, always_call=True)
        self._forward_depths[id(ddp)] = depth
        return ddp

    def backward(
        self, loss: torch.Tensor, module: torch.nn.Module | None, *args: t.Any, **kwargs: t.Any
    ) -> None:
        """Backward; inside the module's own forward, the reducer is prepared first.

        ``DistributedDataParallel`` prepares its reducer for a backward when its forward
        returns. The Trainer's manual optimization runs ``training_step`` as that forward and
        calls backward inside it, before the forward returned: there, this prepares the reducer
        itself (so the gradients are averaged), and has the buckets rebuilt at once after the
        first such backward (a rebuild at the next forward would meet the reducer that forward's
        end prepared for a backward that never comes).
        """
        depth = self._forward_depths.get(id(module)) if module is not None else None
        inside = depth is not None and depth.value > 0
        if inside:
            _prepare_reducer(t.cast(t.Any, module), loss)
        super().backward(loss, module, *args, **kwargs)
        if inside and torch.is_grad_enabled():
            t.cast(t.Any, module).reducer._rebuild_buckets()

    def no_backward_sync(
        self, module: torch.nn.Module, enabled: bool = True
    ) -> contextlib.AbstractContextManager[t.Any]:
        """``DistributedDataParallel.no_sync()``: gradients accumulate locally in the block."""
        from torch.nn.parallel import DistributedDataParallel

        if enabled and isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()


class DDPFindUnusedStrategy(DDPStrategy):
    """``"ddp_find_unused_parameters_true"`` (Lightning's name): ``ddp`` with
    ``find_unused_parameters=True``, for steps whose backward leaves some parameters without a
    gradient (a GAN's manual steps, a frozen branch)."""

    def __init__(self, *args: t.Any, **ddp_kwargs: t.Any) -> None:
        ddp_kwargs.setdefault("find_unused_parameters", True)
        super().__init__(*args, **ddp_kwargs)


class _ForwardDepth:
    """How many calls of one ``DistributedDataParallel`` module's forward are running."""

    def __init__(self) -> None:
        self.value = 0

    def enter(self, *_: t.Any) -> None:
        self.value += 1

    def leave(self, *_: t.Any) -> None:
        self.value -= 1


def _prepare_reducer(ddp: t.Any, loss: torch.Tensor) -> None:
    """What ``DistributedDataParallel``'s forward does for the backward to come, for a backward
    run before that forward returned (gradients stay local under ``no_sync()``)."""
    if not (torch.is_grad_enabled() and ddp.require_backward_grad_sync):
        return
    ddp.require_forward_param_sync = True
    outputs = [loss] if ddp.find_unused_parameters and not ddp.static_graph else []
    ddp.reducer.prepare_for_backward(outputs)


class DDPSpawnStrategy(DDPStrategy):
    """``"ddp_spawn"``: ``fabric.launch(fn)`` runs ``fn`` in N processes started by
    ``torch.multiprocessing`` (start method ``spawn`` by default) and returns rank zero's result.

    The function, its arguments and the Fabric are pickled into the new processes, so define the
    function at module level and guard the script's entry with ``if __name__ == "__main__":``.
    Under an external launcher (torchrun, SLURM) nothing is spawned: ``fn`` runs in place.
    """

    def __init__(
        self,
        process_group_backend: str | None = None,
        timeout: float | datetime.timedelta | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        start_method: t.Literal["spawn", "fork", "forkserver"] = "spawn",
        **ddp_kwargs: t.Any,
    ) -> None:
        super().__init__(process_group_backend, timeout, cluster_environment, **ddp_kwargs)
        if start_method not in ("spawn", "fork", "forkserver"):
            raise ValueError(
                f"start_method={start_method!r}: use 'spawn', 'fork' or 'forkserver'"
            )
        self.start_method = start_method
        self._spawned_rank: int | None = None

    @property
    def launched(self) -> bool:
        env = self.cluster_environment
        return env.creates_processes_externally or self._spawned_rank is not None or (
            self.world_size == 1
        )

    def launch(self, fn: c.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
        if self.launched:
            return fn(*args, **kwargs)
        env = self.cluster_environment
        # Every process must agree on the store's address: fix it before pickling ourselves.
        address, port, node = env.main_address, env.main_port, env.node_rank()
        self._spawn_address = (address, port)
        return launchers.spawn(
            fn,
            args,
            kwargs,
            nprocs=len(self.parallel_devices),
            first_rank=node * len(self.parallel_devices),
            on_start=self._on_spawn_start,
            on_end=self._on_spawn_end,
            start_method=self.start_method,
        )

    def _start_processes(self) -> None:
        if not self.launched:
            raise RuntimeError(
                f"strategy='ddp_spawn' with devices={len(self.parallel_devices)} runs a function "
                "in new processes: put the training in a function and call "
                "fabric.launch(train) (it receives the fabric first). Or use strategy='ddp'"
            )

    def _on_spawn_start(self, local_rank: int) -> None:
        address, port = self._spawn_address
        env = self.cluster_environment
        assert isinstance(env, LocalEnvironment)
        self._environment = _SpawnedEnvironment(
            local_rank,
            devices_per_node=env.devices_per_node,
            num_nodes=env.num_nodes,
            address=address,
            port=port,
            node_rank=env.node_rank(),
        )
        self._spawned_rank = local_rank

    def _on_spawn_end(self) -> None:
        # Processes of torch.multiprocessing skip atexit handlers: clean up here.
        self.teardown()


class _SpawnedEnvironment(LocalEnvironment):
    """A process started by ``ddp_spawn``: its rank is the spawn index."""

    def __init__(
        self,
        local_rank: int,
        *,
        devices_per_node: int,
        num_nodes: int,
        address: str,
        port: int,
        node_rank: int,
    ) -> None:
        super().__init__(devices_per_node=devices_per_node, num_nodes=num_nodes)
        self._local, self._address, self._fixed_port, self._node = (
            local_rank, address, port, node_rank,
        )  # fmt: skip

    @property
    def main_address(self) -> str:
        return self._address

    @property
    def main_port(self) -> int:
        return self._fixed_port

    def local_rank(self) -> int:
        return self._local

    def node_rank(self) -> int:
        return self._node

    def global_rank(self) -> int:
        return self._node * self.devices_per_node + self._local
