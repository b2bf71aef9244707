"""Reference 001, "Step optimizers at arbitrary intervals" and "Access your own optimizer".

``optimizer_step`` overrides with the 1.x signature ``(epoch, batch_idx, optimizer,
optimizer_idx, optimizer_closure, on_tpu, using_native_amp, using_lbfgs)``: an alternating
schedule (optimizer 0 every batch, optimizer 1 every 2 batches), a learning-rate warm-up reading
``self.hparams.learning_rate``, and stepping through ``optimizer.optimizer``.
Run: ``python examples/trainer/automatic_optimizer_step.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer


class TwoHeads(LightningModule):
    # supplied: a model with two parameter groups, one per optimizer
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 1)
        self.head = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx, optimizer_idx):
        x, y = batch
        layer = self.body if optimizer_idx == 0 else self.head
        return nn.functional.mse_loss(layer(x), y)

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.body.parameters(), lr=0.05),
            torch.optim.Adam(self.head.parameters(), lr=0.01),
        )


class Alternating(TwoHeads):
    # Alternating schedule for optimizer steps (e.g. GANs)
    def optimizer_step(
        self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure,
        on_tpu=False, using_native_amp=False, using_lbfgs=False,
    ):  # fmt: skip
        # update generator every step
        if optimizer_idx == 0:
            optimizer.step(closure=optimizer_closure)

        # update discriminator every 2 steps
        if optimizer_idx == 1:  # noqa: SIM102 (the document's code, verbatim)
            if (batch_idx + 1) % 2 == 0:
                optimizer.step(closure=optimizer_closure)

        # ...
        # add as many optimizers as you want


class WarmUp(LightningModule):
    def __init__(self, learning_rate: float = 0.1):
        super().__init__()
        self.save_hyperparameters()  # supplied: the document reads self.hparams.learning_rate
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):  # supplied
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):  # supplied
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)

    # learning rate warm-up
    def optimizer_step(
        self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure,
        on_tpu=False, using_native_amp=False, using_lbfgs=False,
    ):  # fmt: skip
        # skip the first 500 steps
        if self.trainer.global_step < 500:
            lr_scale = min(1.0, float(self.trainer.global_step + 1) / 500.0)
            for pg in optimizer.param_groups:
                pg["lr"] = lr_scale * self.hparams.learning_rate

        # update params
        optimizer.step(closure=optimizer_closure)


class StepWrapped(WarmUp):
    # function hook in LightningModule
    def optimizer_step(
        self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure,
        on_tpu=False, using_native_amp=False, using_lbfgs=False,
    ):  # fmt: skip
        optimizer.step(closure=optimizer_closure)


class StepOwn(WarmUp):
    # `optimizer` is a `LightningOptimizer` wrapping the optimizer.
    # To access it, do the following.
    # However, it won't work on TPU, AMP, etc...
    def optimizer_step(
        self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure,
        on_tpu=False, using_native_amp=False, using_lbfgs=False,
    ):  # fmt: skip
        optimizer = optimizer.optimizer
        optimizer.step(closure=optimizer_closure)


def make_data(n: int = 48, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def main(cls: type[LightningModule] = Alternating, max_epochs: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = cls()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    print(f"{cls.__name__}: global_step={trainer.global_step}")
    return model


if __name__ == "__main__":
    for cls in (Alternating, WarmUp, StepWrapped, StepOwn):
        main(cls)
