"""Helpers for testing what you build on loopkit (plugins, callbacks, modules, loops) with pytest.

Everything here is small, deterministic and fast on a CPU:

- :func:`tiny_model` and :class:`TinyModule`: a two-layer regressor, the same weights for the same
  seed, as a plain ``nn.Module`` (for Fabric loops) or a :class:`~loopkit.LoopModule` (for the
  Trainer);
- :func:`synthetic_data` and :func:`synthetic_loader`: a regression data set made from a seed;
- :class:`HookRecorder`: a callback that records every hook it hears, in order, with its
  arguments.

Use it as ``from loopkit import testing`` or ``import loopkit.testing``; it is not among the names
``import loopkit`` exports. The helpers never change global state: seeding happens on private
generators, so a test's own ``torch.manual_seed`` is left as it was. This module imports no plugin
and no test framework.
"""

from __future__ import annotations

import collections.abc as c
import typing as t
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit.hooks import HOOKS
from loopkit.module import LoopModule

__all__ = [
    "HookCall",
    "HookRecorder",
    "TinyModule",
    "synthetic_data",
    "synthetic_loader",
    "tiny_model",
]


def tiny_model(
    seed: int = 0, in_features: int = 4, hidden: int = 8, out_features: int = 1
) -> nn.Sequential:
    """A ``Linear -> Tanh -> Linear`` regressor whose initial weights depend only on ``seed``.

    Two calls with the same arguments return modules with equal weights; the global RNG is left
    untouched.
    """
    _check_positive(in_features=in_features, hidden=hidden, out_features=out_features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features)
        )


def synthetic_data(
    n: int = 64, in_features: int = 4, out_features: int = 1, seed: int = 0
) -> TensorDataset:
    """``n`` pairs ``(x, y)`` with ``y`` a fixed linear function of ``x`` plus a little noise.

    The same arguments give the same tensors; the global RNG is left untouched.
    """
    _check_positive(n=n, in_features=in_features, out_features=out_features)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=gen)
    w = torch.randn(in_features, out_features, generator=gen)
    y = x @ w + 0.1 * torch.randn(n, out_features, generator=gen)
    return TensorDataset(x, y)


def synthetic_loader(
    n: int = 64,
    batch_size: int = 8,
    in_features: int = 4,
    out_features: int = 1,
    seed: int = 0,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A ``DataLoader`` over :func:`synthetic_data`, in order (no shuffling, no workers)."""
    _check_positive(batch_size=batch_size)
    data = synthetic_data(n, in_features, out_features, seed)
    return DataLoader(data, batch_size=batch_size, shuffle=False)


class TinyModule(LoopModule):
    """:func:`tiny_model` as a :class:`~loopkit.LoopModule`: MSE loss, plain SGD.

    ``training_step`` logs ``train_loss``; ``validation_step`` logs ``val_loss``.
    ``self.net`` has the weights ``tiny_model(seed, in_features, hidden, out_features)`` has, so
    a plain PyTorch loop over a copy of it is the reference to compare a Trainer run against.
    """

    def __init__(
        self,
        lr: float = 0.1,
        seed: int = 0,
        in_features: int = 4,
        hidden: int = 8,
        out_features: int = 1,
    ) -> None:
        super().__init__()
        self.lr = lr
        self.net = tiny_model(seed, in_features, hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@dataclass(frozen=True)
class HookCall:
    """One hook a :class:`HookRecorder` heard: its name and the keyword arguments it got."""

    name: str
    kwargs: dict[str, t.Any]


class HookRecorder:
    """A callback that records every declared hook it hears, in firing order.

    Pass it where callbacks go (``Trainer(callbacks=[recorder])``,
    ``Fabric(callbacks=[recorder])``) or connect it to a bus (``fabric.bus.connect(recorder)``).
    Custom hooks fired with ``fabric.call("name", ...)`` are recorded when named in ``custom``.

    ``recorder.names`` is the list of hook names heard; ``recorder.calls`` the :class:`HookCall`
    records with their keyword arguments (the objects themselves, not copies). With ``only``, the
    recorder subscribes to those hooks alone, which keeps a long run's record short.

    It answers no query: ``should_optimizer_step`` and ``on_train_batch_start`` receive None from
    it, which changes nothing in the loop.
    """

    def __init__(
        self, custom: c.Iterable[str] = (), *, only: c.Iterable[str] | None = None
    ) -> None:
        self.calls: list[HookCall] = []
        custom = [custom] if isinstance(custom, str) else list(custom)
        selected = None if only is None else ([only] if isinstance(only, str) else list(only))
        for name in [*custom, *(selected or [])]:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"HookRecorder: a hook name is an identifier string, got {name!r}")
        if selected is not None:
            unknown = [n for n in selected if n not in HOOKS]
            if unknown:
                raise ValueError(
                    f"HookRecorder(only=...) names {', '.join(map(repr, unknown))}, which "
                    "are not declared hooks (see loopkit.hooks.HOOKS); pass custom hook names "
                    "as HookRecorder(custom=[...])"
                )
        declared = list(HOOKS) if selected is None else selected
        # Instance attributes: the bus finds declared hooks by name (dir() lists these) and
        # custom ones by getattr when they are fired.
        for name in [*declared, *custom]:
            setattr(self, name, self._receiver(name))

    def _receiver(self, name: str) -> c.Callable[..., None]:
        def record(**kwargs: t.Any) -> None:
            self.calls.append(HookCall(name, kwargs))

        record.__name__ = record.__qualname__ = name
        return record

    @property
    def names(self) -> list[str]:
        """The names of the hooks heard, in order, one entry per firing."""
        return [call.name for call in self.calls]

    def count(self, name: str) -> int:
        """How many times ``name`` fired."""
        return sum(1 for call in self.calls if call.name == name)

    def of(self, name: str) -> list[dict[str, t.Any]]:
        """The keyword arguments of each firing of ``name``, in order."""
        return [call.kwargs for call in self.calls if call.name == name]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.calls.clear()

    def __repr__(self) -> str:
        return f"HookRecorder({len(self.calls)} call(s))"


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r}: pass a positive int")
