"""``fabric.call``: run callbacks by hook name, and build a small callback-driven loop on it.

Part 1 is the ``call`` example of the Fabric methods reference: callbacks given to ``Fabric``
run when their method's name is called, receiving the keyword arguments they name; a name no
callback defines runs nothing.

Part 2 is a loop that owns nothing but the order of events. Everything else is a callback:

* ``LossHistory`` listens to a custom hook, ``on_batch_loss``, fired by the loop;
* ``GradientClipping`` listens to ``on_before_optimizer_step``, which Fabric fires itself inside
  ``optimizer.step()`` (gradients are final there);
* ``LearningRateDecay`` halves the learning rate in ``on_train_epoch_end``;
* ``EarlyStopping`` answers a custom query hook, ``should_stop``: the loop stops when any
  receiver returns True;
* the model itself counts epochs: a module passed to ``fabric.setup`` receives hooks through its
  own methods, like a callback.

Run: ``python examples/fabric/custom_hooks.py``.
"""

from __future__ import annotations

import typing as t

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Fabric

SEED = 7


# -- part 1: the reference example -----------------------------------------------------------


class MyCallback:
    def __init__(self) -> None:
        self.seen: list[tuple[str, t.Any]] = []

    def on_train_start(self) -> None:
        self.seen.append(("on_train_start", None))

    def on_train_epoch_end(self, model: nn.Module, results: dict[str, float]) -> None:
        self.seen.append(("on_train_epoch_end", results))


def call_example() -> MyCallback:
    callback = MyCallback()
    fabric = Fabric(accelerator="cpu", callbacks=[callback])

    # Call any hook by name
    fabric.call("on_train_start")

    # Pass in additional arguments that the hook requires
    fabric.call("on_train_epoch_end", model=nn.Linear(2, 1), results={"loss": 0.25})

    # Only the callbacks that have this method defined will be executed
    fabric.call("undefined")
    return callback


# -- part 2: a callback-driven loop ----------------------------------------------------------


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.epochs_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_end(self) -> None:  # the module is a receiver too
        self.epochs_seen += 1


class LossHistory:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch_loss(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.item())


class GradientClipping:
    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm
        self.norms: list[float] = []

    def on_before_optimizer_step(
        self, fabric: Fabric, module: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        norm = fabric.clip_gradients(module, optimizer, max_norm=self.max_norm)
        self.norms.append(float(t.cast(torch.Tensor, norm)))


class LearningRateDecay:
    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def on_train_epoch_end(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] *= self.gamma


class EarlyStopping:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.stopped_at: int | None = None

    def should_stop(self, epoch: int, mean_loss: float) -> bool:
        if mean_loss < self.threshold:
            self.stopped_at = epoch
            return True
        return False


def fit(
    fabric: Fabric,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: t.Iterable[tuple[torch.Tensor, torch.Tensor]],
    max_epochs: int,
) -> int:
    """The loop: events in order, behaviour in callbacks. Returns the epochs run."""
    fabric.call("on_train_start")
    epoch = 0
    for epoch in range(max_epochs):
        total, batches = 0.0, 0
        for batch_idx, (x, y) in enumerate(loader):
            loss = nn.functional.mse_loss(model(x), y)
            fabric.call("on_batch_loss", loss=loss, batch_idx=batch_idx)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()  # Fabric fires on_before_optimizer_step inside
            total, batches = total + loss.item(), batches + 1
        mean_loss = total / batches
        fabric.call("on_train_epoch_end", epoch=epoch, optimizer=optimizer, mean_loss=mean_loss)
        answers = fabric.call("should_stop", epoch=epoch, mean_loss=mean_loss)
        if any(answer for _, answer in answers):
            break
    fabric.call("on_train_end")
    return epoch + 1


def make_loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=gen)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)


class Run(t.NamedTuple):
    model: Regressor
    epochs: int
    history: LossHistory
    clipping: GradientClipping
    stopping: EarlyStopping


def train(max_epochs: int = 12, threshold: float = 0.05, max_norm: float = 0.5) -> Run:
    history = LossHistory()
    clipping = GradientClipping(max_norm)
    stopping = EarlyStopping(threshold)
    callbacks = [history, clipping, LearningRateDecay(gamma=0.8), stopping]
    fabric = Fabric(accelerator="cpu", callbacks=callbacks)
    fabric.seed_everything(SEED)
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    wrapped, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(make_loader())
    epochs = fit(fabric, wrapped, optimizer, loader, max_epochs)
    return Run(model, epochs, history, clipping, stopping)


def main() -> None:
    callback = call_example()
    print("part 1, hooks seen:", [name for name, _ in callback.seen])
    run = train()
    print(
        f"part 2: {run.epochs} epochs (early stop at {run.stopping.stopped_at}), "
        f"model counted {run.model.epochs_seen}, last loss {run.history.losses[-1]:.4f}, "
        f"largest gradient norm {max(run.clipping.norms):.3f}"
    )


if __name__ == "__main__":
    main()
