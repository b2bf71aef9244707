"""Starting the replicas of ``strategy="xla"``: one process per device, the master's result back.

``torch_xla.launch`` runs ``fn(index, *args)`` in one new process per device of the host and
returns nothing, so the master ordinal writes its result to a file the launching process reads.
With ``start_method="fork"`` the function never crosses a pipe (it waits in :data:`_PENDING`,
which forked children inherit), so lambdas and closures work; with ``"spawn"`` the strategy,
the function and its arguments are pickled once and each replica unpickles its own copy.
"""

from __future__ import annotations

import collections.abc as c
import os
import pickle
import tempfile
import typing as t
import uuid

import torch

from loopkit import checkpoint as _ckpt
from loopkit.strategy import move_to_device

if t.TYPE_CHECKING:
    from loopkit_xla.strategy import XLAStrategy

__all__ = ["launch_replicas"]

_Payload = tuple["XLAStrategy", c.Callable[..., t.Any], tuple[t.Any, ...], dict[str, t.Any]]

#: Launches in progress in this process, by token: what forked replicas run.
_PENDING: dict[str, _Payload] = {}


class _Replica:
    """What each replica receives (picklable): how to find its payload, where its result goes."""

    def __init__(self, token: str, pickled: bytes | None, result_path: str) -> None:
        self.token, self.pickled, self.result_path = token, pickled, result_path

    def payload(self) -> _Payload:
        if self.pickled is not None:
            return t.cast(_Payload, pickle.loads(self.pickled))
        try:
            return _PENDING[self.token]
        except KeyError:
            raise RuntimeError(
                "this XLA replica did not inherit its function from the launching process "
                "(it was not forked); use XLAStrategy(start_method='spawn')"
            ) from None


def _run_replica(index: int, replica: _Replica) -> None:
    """The body of every replica (``index``: its ordinal, as torch_xla passes it)."""
    strategy, fn, args, kwargs = replica.payload()
    strategy._enter_replica()
    result = fn(*args, **kwargs)
    if strategy.is_global_zero:
        _ckpt.atomic_save(move_to_device(result, torch.device("cpu")), replica.result_path)


def launch_replicas(
    strategy: XLAStrategy,
    fn: c.Callable[..., t.Any],
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
) -> t.Any:
    """Run ``fn(*args, **kwargs)`` in one replica per device; return the master's result."""
    rt = strategy.runtime
    if rt.initialized():
        raise RuntimeError(
            "the XLA runtime already started in this process (an XLA tensor or device was "
            "used before fabric.launch()), and PJRT cannot start replicas after that: create "
            "XLA tensors only inside the launched function"
        )
    if rt.device_type() == "CPU":
        raise RuntimeError(
            f"strategy='xla' with devices={strategy.num_replicas} on the CPU: PJRT runs CPU "
            "replicas as threads of one process (loopkit keeps one Fabric per process), and "
            "collectives between CPU replicas hang in torch_xla 2.9. On the CPU use "
            "strategy='xla_spmd' (one process over CPU_NUM_DEVICES devices) or devices=1; run "
            "several replicas on TPUs"
        )
    token = uuid.uuid4().hex
    payload: _Payload = (strategy, fn, args, kwargs)
    pickled: bytes | None = None
    if strategy.start_method != "fork":
        try:
            pickled = pickle.dumps(payload)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(
                f"start_method={strategy.start_method!r} pickles the launched function and its "
                f"arguments, and that failed ({type(err).__name__}: {err}); launch a "
                "module-level function, or use XLAStrategy(start_method='fork')"
            ) from err
    with tempfile.TemporaryDirectory(prefix="loopkit-xla-") as tmp:
        result_path = os.path.join(tmp, "result.pt")
        _PENDING[token] = payload
        try:
            rt.launch(
                _run_replica,
                (_Replica(token, pickled, result_path),),
                strategy.start_method,
            )
        finally:
            del _PENDING[token]
        if not os.path.exists(result_path):
            return None
        return _ckpt.safe_load(result_path, weights_only=False)
