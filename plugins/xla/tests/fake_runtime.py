"""A stand-in for torch_xla's runtime: replicas are threads of this process, devices are the CPU.

It answers every question :class:`loopkit_xla._runtime.XLARuntime` answers, the way PJRT would
for ``replicas`` replicas on one host, and records what the strategies asked (graph cuts,
gradient reductions, rendezvous tags). Collectives are real: threads meet at a barrier and
exchange tensors, so a data-parallel run through it computes what a real one would.
"""

from __future__ import annotations

import collections
import threading
import typing as t

import torch

from loopkit_xla._runtime import XLARuntime

#: Every fake made in this process: unpickling one (a replica's copy of the strategy) finds the
#: original, whose threads, barrier and records the replicas share.
_ALIVE: dict[int, FakeRuntime] = {}


def _find(key: int) -> FakeRuntime:
    return _ALIVE[key]


class FakeRuntime(XLARuntime):
    def __init__(self, replicas: int = 1, *, kind: str = "TPU", threads: int = 1) -> None:
        _ALIVE[id(self)] = self
        self.replicas = replicas
        self.kind = kind
        self.threads = threads
        self.started = False
        self.local = threading.local()
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(replicas)
        self.slots: list[t.Any] = [None] * replicas
        #: per ordinal: how many times each thing was asked for
        self.counts: collections.defaultdict[tuple[int, str], int] = collections.defaultdict(int)
        self.tags: list[tuple[int, str]] = []
        self.launches: list[str] = []
        self.spmd = False

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (_find, (id(self),))

    # -- topology ---------------------------------------------------------------------------

    @property
    def ordinal(self) -> int:
        return getattr(self.local, "ordinal", 0)

    def count(self, what: str) -> int:
        return sum(n for (_, w), n in self.counts.items() if w == what)

    def _bump(self, what: str) -> None:
        with self.lock:
            self.counts[(self.ordinal, what)] += 1

    def available(self) -> bool:
        return True

    def device_type(self) -> str:
        return self.kind

    def initialized(self) -> bool:
        return self.started

    def device_count(self) -> int:
        return self.replicas

    def global_device_count(self) -> int:
        return self.replicas

    def device(self, index: int | None = None) -> torch.device:
        self.started = True
        return torch.device("cpu")

    def world_size(self) -> int:
        return self.replicas if hasattr(self.local, "ordinal") else 1

    def global_ordinal(self) -> int:
        return self.ordinal

    def local_ordinal(self) -> int:
        return self.ordinal

    def host_index(self) -> int:
        return 0

    def replicas_in_process(self) -> int:
        return self.threads

    # -- graph and collectives --------------------------------------------------------------

    def sync(self) -> None:
        self._bump("sync")

    def wait(self) -> None:
        pass

    def _exchange(self, value: t.Any) -> list[t.Any]:
        """Every replica's ``value``, by ordinal (a real meeting of the threads)."""
        self.slots[self.ordinal] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self._bump("reduce_gradients")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        everyone = self._exchange([g.clone() for g in grads])
        for i, grad in enumerate(grads):
            grad.copy_(torch.stack([theirs[i] for theirs in everyone]).mean(0))

    def all_reduce(self, tensor: torch.Tensor, op: t.Any) -> torch.Tensor:
        self._bump("all_reduce")
        stacked = torch.stack(self._exchange(tensor.clone()))
        if op == "sum":
            return stacked.sum(0)
        if op == "mean":
            return stacked.mean(0)
        return stacked.amax(0) if op == "max" else stacked.amin(0)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self._bump("all_gather")
        return torch.cat(self._exchange(tensor.clone()), dim=0)

    def rendezvous(self, tag: str, payload: bytes = b"") -> list[bytes]:
        with self.lock:
            self.tags.append((self.ordinal, tag))
        return self._exchange(payload)

    # -- processes and data -----------------------------------------------------------------

    def launch(self, fn: t.Any, args: tuple[t.Any, ...], start_method: str) -> None:
        self.launches.append(start_method)
        errors: list[BaseException] = []

        def replica(index: int) -> None:
            self.local.ordinal = index
            try:
                fn(index, *args)
            except BaseException as err:  # a failing replica must not leave the others waiting
                errors.append(err)
                self.barrier.abort()

        threads = [threading.Thread(target=replica, args=(i,)) for i in range(self.replicas)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]

    def device_loader(self, loader: t.Any, device: torch.device) -> t.Any:
        self._bump("device_loader")
        return loader

    def use_spmd(self) -> None:
        self.spmd = True

    def data_mesh(self, n_devices: int) -> t.Any:
        return ("mesh", n_devices)

    def shard_batch(self, tensor: torch.Tensor, device: torch.device, mesh: t.Any) -> torch.Tensor:
        self._bump("shard_batch")
        return tensor.to(device)
