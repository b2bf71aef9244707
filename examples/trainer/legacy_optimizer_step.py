"""Reference 002 (the earliest API), "Step optimizers at arbitrary intervals".

``optimizer_step(current_epoch, batch_nb, optimizer, optimizer_i, second_order_closure=None)``:
training_step and backward have run when it is called, and the override steps and zeroes the
gradients itself. Shown: the plain step, an alternating schedule (optimizer 0 every 2 batches,
optimizer 1 every 4) and a learning-rate warm-up.
Run: ``python examples/trainer/legacy_optimizer_step.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer


class Plain(LightningModule):
    def __init__(self, learning_rate: float = 0.05):
        super().__init__()
        self.save_hyperparameters()  # supplied: the warm-up reads self.hparams.learning_rate
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):  # supplied
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):  # supplied
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)

    def optimizer_step(self, current_epoch, batch_nb, optimizer, optimizer_i, second_order_closure=None):  # noqa: E501
        optimizer.step()
        optimizer.zero_grad()


class Alternating(LightningModule):
    def __init__(self):
        super().__init__()
        self.gen = nn.Linear(8, 1)  # supplied: two parameter groups
        self.dis = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx, optimizer_idx):  # supplied
        x, y = batch
        layer = self.gen if optimizer_idx == 0 else self.dis
        return nn.functional.mse_loss(layer(x), y)

    def configure_optimizers(self):  # supplied
        return torch.optim.SGD(self.gen.parameters(), lr=0.05), torch.optim.Adam(
            self.dis.parameters(), lr=0.01
        )

    # Alternating schedule for optimizer steps (ie: GANs)
    def optimizer_step(self, current_epoch, batch_nb, optimizer, optimizer_i, second_order_closure=None):  # noqa: E501
        # update generator opt every 2 steps
        if optimizer_i == 0:  # noqa: SIM102 (verbatim)
            if batch_nb % 2 == 0 :
                optimizer.step()
                optimizer.zero_grad()

        # update discriminator opt every 4 steps
        if optimizer_i == 1:  # noqa: SIM102 (verbatim)
            if batch_nb % 4 == 0 :
                optimizer.step()
                optimizer.zero_grad()

        # ...
        # add as many optimizers as you want


class WarmUp(Plain):
    # learning rate warm-up
    def optimizer_step(self, current_epoch, batch_nb, optimizer, optimizer_i, second_order_closure=None):  # noqa: E501
        # warm up lr
        if self.trainer.global_step < 500:
            lr_scale = min(1., float(self.trainer.global_step + 1) / 500.)
            for pg in optimizer.param_groups:
                pg['lr'] = lr_scale * self.hparams.learning_rate

        # update params
        optimizer.step()
        optimizer.zero_grad()


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
    for cls in (Plain, Alternating, WarmUp):
        main(cls)
