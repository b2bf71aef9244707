"""Shared pieces of the scheduler tests: data, a module with one or two optimizers, a plain loop.

The module records, at every ``training_step``, the learning rate of each of its optimizers; the
plain loop trains an identical copy by hand with the same optimizers and records the same way,
so a test compares the two lists of learning rates step by step (and the final weights).
"""

from __future__ import annotations

import copy
import typing as t

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit.module import LoopModule
from loopkit.trainer import Trainer

SAMPLES, BATCH = 28, 4  # 7 batches per epoch: an odd count, so step frequencies straddle epochs
BATCHES_PER_EPOCH = SAMPLES // BATCH
Batch = tuple[torch.Tensor, torch.Tensor]


def dataset() -> TensorDataset:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(SAMPLES, 3, generator=gen)
    y = x @ torch.randn(3, 1, generator=gen) + 0.1 * torch.randn(SAMPLES, 1, generator=gen)
    return TensorDataset(x, y)


def loader() -> DataLoader:
    return DataLoader(dataset(), batch_size=BATCH)


def batches() -> list[Batch]:
    data = dataset()
    return [data[i : i + BATCH] for i in range(0, SAMPLES, BATCH)]


def val_loader() -> DataLoader:
    gen = torch.Generator().manual_seed(12)
    return DataLoader(TensorDataset(torch.randn(4, 3, generator=gen), torch.randn(4, 1)), 4)


def lr_of(opt: t.Any) -> float:
    return float(opt.param_groups[0]["lr"])


Configure = t.Callable[["Net"], t.Any]


class Net(LoopModule):
    """Two linear heads ``a`` and ``b``: optimizer 0 trains ``a``, optimizer 1 trains ``b``.

    ``configure(self)`` is what ``configure_optimizers`` returns. ``val_script`` maps a metric
    name to its value per epoch, logged by ``validation_step``.
    """

    def __init__(
        self, configure: Configure, val_script: dict[str, list[float]] | None = None
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 1)
        self.b = nn.Linear(3, 1)
        self.configure = configure
        self.val_script = val_script or {}
        self.lrs: list[tuple[float, ...]] = []

    def loss(self, idx: int, batch: Batch) -> torch.Tensor:
        x, y = batch
        head = self.a if idx == 0 else self.b
        return nn.functional.mse_loss(head(x), y)

    def training_step(self, batch: Batch, batch_idx: int, optimizer_idx: int = 0) -> torch.Tensor:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        self.lrs.append(tuple(lr_of(o) for o in opts))
        return self.loss(optimizer_idx, batch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        for name, script in self.val_script.items():
            self.log(name, script[self.current_epoch])

    def configure_optimizers(self) -> t.Any:
        return self.configure(self)


def twin(module: Net) -> Net:
    """An untrained copy with the same weights and configuration (the plain loop's model)."""
    return copy.deepcopy(module)


def trainer(**kwargs: t.Any) -> Trainer:
    for key, value in (
        ("accelerator", "cpu"),
        ("logger", False),
        ("enable_progress_bar", False),
        ("enable_model_summary", False),
        ("enable_checkpointing", False),
    ):
        kwargs.setdefault(key, value)
    return Trainer(**kwargs)


def fit(module: Net, epochs: int, validate: bool = False, **kwargs: t.Any) -> Trainer:
    run = trainer(max_epochs=epochs, **kwargs)
    run.fit(module, loader(), val_loader() if validate else None)
    return run


def plain_fit(
    net: Net,
    optimizers: list[torch.optim.Optimizer],
    epochs: int,
    after_batch: t.Callable[[int, int], None] | None = None,
    after_epoch: t.Callable[[int], None] | None = None,
    steps: t.Callable[[int, int], bool] | None = None,
) -> list[tuple[float, ...]]:
    """Train ``net`` as automatic optimization does, by hand; return the learning rates seen.

    ``after_batch(epoch, batch_idx)`` runs after each batch's optimizer steps and
    ``after_epoch(epoch)`` after each epoch: that is where a test steps its schedulers by hand.
    ``steps(optimizer_idx, batch_idx)`` says whether that optimizer steps on that batch.
    """
    lrs: list[tuple[float, ...]] = []
    for epoch in range(epochs):
        for batch_idx, batch in enumerate(batches()):
            for idx, opt in enumerate(optimizers):
                if steps is not None and not steps(idx, batch_idx):
                    continue
                lrs.append(tuple(lr_of(o) for o in optimizers))
                loss = net.loss(idx, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if after_batch is not None:
                after_batch(epoch, batch_idx)
        if after_epoch is not None:
            after_epoch(epoch)
    return lrs


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class RecordingLogger:
    """A logger object: keeps every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def series(self, key: str) -> list[tuple[int | None, float]]:
        """``(step, value)`` of every call that logged ``key``."""
        return [(step, m[key]) for step, m in self.calls if key in m]
