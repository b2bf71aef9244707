"""``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``), parameters sharded across ranks.

Each rank holds a shard of every parameter (a ``DTensor``); forward and backward all-gather what
they need and reduce-scatter gradients. Checkpoints are sharded: ``fabric.save(path, state)``
writes a directory through ``torch.distributed.checkpoint`` (each rank its own shards) and
``fabric.load(path, state)`` reads it back into the sharded modules and optimizers, also on a
different number of ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import typing as t
import weakref
from pathlib import Path

import torch

from loopkit_ddp.ddp import DDPStrategy
from loopkit_ddp.environments import ClusterEnvironment

if t.TYPE_CHECKING:
    import collections.abc as c

    from loopkit.precision import Precision

__all__ = ["FSDPStrategy", "mixed_precision_policy"]

#: A collection of module classes, or a callable ``module -> bool``, or None (root only).
WrapPolicy: t.TypeAlias = t.Any


def mixed_precision_policy(precision: Precision) -> t.Any:
    """FSDP2's ``MixedPrecisionPolicy`` for the installed precision, or None for float32.

    Read through the precision's public attributes only: a mixed precision's ``autocast_dtype``
    becomes the dtype parameters are all-gathered and computed in, with gradients reduced in
    float32 (the sharded parameters and the optimizer stay float32); a true precision's
    ``param_dtype`` is used for both (the module was converted to it already).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    compute = getattr(precision, "autocast_dtype", None)
    if isinstance(compute, torch.dtype):
        return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    stored = getattr(precision, "param_dtype", None)
    if isinstance(stored, torch.dtype) and stored != torch.float32:
        return MixedPrecisionPolicy(param_dtype=stored, reduce_dtype=stored)
    return None


class FSDPStrategy(DDPStrategy):
    """``"fsdp"``: shard parameters, gradients and optimizer state with FSDP2.

    ``auto_wrap_policy`` chooses the submodules sharded as their own unit (all-gathered one at a
    time, which bounds peak memory): a set of module classes (e.g. ``{TransformerBlock}``) or a
    callable ``module -> bool``; the root module is always sharded last. ``reshard_after_forward``
    and other keyword arguments go to ``fully_shard``; ``mp_policy`` overrides the policy taken
    from the precision plugin (:func:`mixed_precision_policy`).

    ``fabric.setup(model, optimizer)`` works: the optimizer is rebound to the sharded parameters
    (it must not have state yet). Creating the optimizer after ``fabric.setup(model)`` from the
    returned module's parameters works too.
    """

    replicated = False

    def __init__(
        self,
        auto_wrap_policy: WrapPolicy = None,
        reshard_after_forward: bool = True,
        mp_policy: t.Any = None,
        process_group_backend: str | None = None,
        timeout: float | datetime.timedelta | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        **fully_shard_kwargs: t.Any,
    ) -> None:
        super().__init__(process_group_backend, timeout, cluster_environment)
        if auto_wrap_policy is not None and not callable(auto_wrap_policy):
            classes = tuple(auto_wrap_policy)
            if not all(isinstance(c, type) and issubclass(c, torch.nn.Module) for c in classes):
                raise TypeError(
                    f"auto_wrap_policy={auto_wrap_policy!r}: pass a set of torch.nn.Module "
                    "subclasses or a callable module -> bool"
                )
            auto_wrap_policy = classes
        self.auto_wrap_policy = auto_wrap_policy
        self.reshard_after_forward = reshard_after_forward
        self.mp_policy = mp_policy
        self.fully_shard_kwargs = fully_shard_kwargs
        self._mesh: t.Any = None
        # id(old parameter) -> (weak reference to it, sharded parameter), for optimizers made
        # before set-up. Tensors compare elementwise, so they cannot be dictionary keys; the
        # weak reference keeps the old full-size tensors from being held alive here.
        self._rebind: dict[int, tuple[weakref.ref[torch.Tensor], torch.nn.Parameter]] = {}
        self._modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._sync: dict[int, bool] = {}

    # -- set-up -----------------------------------------------------------------------------------

    @property
    def device_mesh(self) -> t.Any:
        """The one-dimensional ``DeviceMesh`` over every rank (made at the first set-up)."""
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.root_device.type, (self.world_size,))
        return self._mesh

    def module_to_device(self, module: torch.nn.Module) -> None:
        """Nothing: ``fully_shard`` moves each shard to the device (never the whole module)."""

    def _wraps(self, module: torch.nn.Module) -> bool:
        policy = self.auto_wrap_policy
        if policy is None:
            return False
        if isinstance(policy, tuple):
            return isinstance(module, policy)
        return bool(policy(module))

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(module, FSDPModule):
            raise ValueError(
                f"{type(module).__name__} is sharded already (fully_shard was applied); pass the "
                "unsharded module to fabric.setup()"
            )
        before = dict(module.named_parameters())
        kwargs = dict(self.fully_shard_kwargs)
        policy = self.mp_policy if self.mp_policy is not None else mixed_precision_policy(
            self.precision
        )
        if policy is not None:
            kwargs["mp_policy"] = policy
        kwargs["reshard_after_forward"] = self.reshard_after_forward
        # Children before parents: reversed pre-order visits every submodule after its children.
        for sub in reversed(list(module.modules())):
            if sub is not module and self._wraps(sub):
                fully_shard(sub, mesh=self.device_mesh, **kwargs)
        fully_shard(module, mesh=self.device_mesh, **kwargs)
        after = dict(module.named_parameters())
        for name, old in before.items():
            new = after.get(name)
            if new is not None and new is not old:
                self._rebind[id(old)] = (weakref.ref(old), new)
        self._modules.add(module)
        return module

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``optimizer`` at the sharded parameters of the modules set up so far."""
        def sharded(p: torch.Tensor) -> torch.Tensor | None:
            entry = self._rebind.get(id(p))
            return entry[1] if entry is not None and entry[0]() is p else None

        stale = [p for g in optimizer.param_groups for p in g["params"] if sharded(p) is not None]
        if any(optimizer.state.get(p) for p in stale):
            raise ValueError(
                f"{type(optimizer).__name__} has state for parameters that fsdp has since sharded; "
                "set up the module and optimizer before the first step"
            )
        for group in optimizer.param_groups:
            group["params"] = [_first(sharded(p), p) for p in group["params"]]
        self._optimizers.add(optimizer)
        return optimizer

    # -- the step ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _no_sync(self, module: torch.nn.Module) -> c.Iterator[None]:
        previous = _requires_sync(module, self._sync.get(id(module), True))
        module.set_requires_gradient_sync(False)  # type: ignore[operator]
        self._sync[id(module)] = False
        try:
            yield
        finally:
            module.set_requires_gradient_sync(previous)  # type: ignore[operator]
            self._sync[id(module)] = previous

    def no_backward_sync(
        self, module: torch.nn.Module, enabled: bool = True
    ) -> contextlib.AbstractContextManager[t.Any]:
        """``set_requires_gradient_sync(False)`` in the block; the previous setting after it."""
        from torch.distributed.fsdp import FSDPModule

        if enabled and isinstance(module, FSDPModule):
            return self._no_sync(module)
        return contextlib.nullcontext()

    def clip_gradients_norm(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        total = super().clip_gradients_norm(
            module, optimizer, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )
        full = getattr(total, "full_tensor", None)
        return t.cast(torch.Tensor, full()) if full is not None else total

    # -- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path, state: dict[str, t.Any]) -> None:
        """Write ``state`` as a sharded checkpoint directory at ``path`` (every rank writes).

        The shards go to a temporary directory beside ``path`` that rank zero renames over
        ``path`` once every rank has written: a crash leaves the previous checkpoint intact.
        """
        from torch.distributed.checkpoint.state_dict_saver import save

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"fsdp writes a sharded checkpoint directory, but {str(path)!r} is a file; "
                "choose another path"
            )
        tmp = path.with_name(f".{path.name}.partial")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("fsdp_save_begin")
        save(state, checkpoint_id=tmp)
        self.barrier("fsdp_save_written")
        if self.is_global_zero:
            old = path.with_name(f".{path.name}.old")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            if old.exists():
                shutil.rmtree(old)

    def load_checkpoint(self, path: str | Path, weights_only: bool = True) -> dict[str, t.Any]:
        """Read a sharded checkpoint directory into the modules and optimizers set up here.

        Entries that hold a set-up module's state or an optimizer's state are loaded in place
        (each rank reads only its shards); other entries come back as full values.
        """
        from torch.distributed.checkpoint.filesystem import FileSystemReader
        from torch.distributed.checkpoint.state_dict_loader import load

        path = Path(path)
        if not path.is_dir():
            if path.is_file():
                raise ValueError(
                    f"{str(path)!r} is a single-file checkpoint; fsdp reads the sharded "
                    "checkpoint directories fabric.save() writes under fsdp. Load a full state "
                    "dict with strategy='ddp', or convert it with "
                    "torch.distributed.checkpoint.format_utils.torch_save_to_dcp"
                )
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        reader = FileSystemReader(path)
        metadata = reader.read_metadata()
        by_key = _top_level_keys(metadata)
        template: dict[str, t.Any] = {}
        rest: set[str] = set()
        for key, flat in by_key.items():
            target = self._template_for(key, flat)
            if target is None:
                rest.add(key)
            else:
                template[key] = target
        if template:
            load(template, checkpoint_id=path)
        if rest:
            # Entries no set-up object holds (counters, plain tensors): rebuilt from the metadata.
            from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

            template.update(_load_state_dict_from_keys(rest, checkpoint_id=path))
        return template

    def _template_for(self, key: str, flat: set[str]) -> t.Any:
        from torch.distributed.checkpoint._nested_dict import flatten_state_dict

        for module in list(self._modules):
            sd = module.state_dict()
            if {f"{key}.{k}" for k in sd} == flat:
                return sd
        for optimizer in list(self._optimizers):
            _init_optimizer_state(optimizer)
            sd = optimizer.state_dict()
            if set(flatten_state_dict({key: sd})[0]) == flat:
                return sd
        return None


def _top_level_keys(metadata: t.Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    planner_data = metadata.planner_data or {}
    for flat_key in metadata.state_dict_metadata:
        path = planner_data.get(flat_key)
        top = str(path[0]) if path else flat_key.split(".", 1)[0]
        out.setdefault(top, set()).add(flat_key)
    return out


def _requires_sync(module: torch.nn.Module, fallback: bool) -> bool:
    # FSDP2 has a setter but no getter; read the flag it sets when the layout is the known one.
    from torch.distributed.fsdp import FSDPModule

    try:
        groups = [
            g
            for m in module.modules()
            if isinstance(m, FSDPModule)
            for g in m._get_fsdp_state()._fsdp_param_groups
        ]
        return bool(all(g.reduce_grads for g in groups)) if groups else fallback
    except (AttributeError, TypeError):
        return fallback


def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create ``optimizer``'s per-parameter state (a no-op step: zero gradients, zero lr)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    if not params or all(optimizer.state.get(p) for p in params):
        return
    made = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
            made.append(p)
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = torch.zeros_like(g["lr"]) if isinstance(g["lr"], torch.Tensor) else 0.0
    try:
        with torch.no_grad():
            optimizer.step()
    finally:
        for g, lr in zip(optimizer.param_groups, lrs):
            g["lr"] = lr
        for p in made:
            p.grad = None


def _first(value: torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
    return default if value is None else value
