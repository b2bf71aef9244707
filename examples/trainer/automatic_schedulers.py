"""References 001 and 002, ``configure_optimizers`` with learning-rate schedulers (automatic).

Each class returns one of the documents' forms. Stepping the schedulers is the LR scheduling
plugin's job (``pip install loopkit-schedulers``); without it, returning schedulers is an error
naming that distribution. ``ReduceLROnPlateau`` reads the monitored metric from what
``validation_step`` logged. Run: ``python examples/trainer/automatic_schedulers.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import SGD, Adam
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau, StepLR
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer


class _Parts(LightningModule):
    # supplied: a model with two parameter groups, its losses and a monitored metric
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 1)
        self.b = nn.Linear(8, 1)

    def loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.a(x) + self.b(x), y)

    def training_step(self, batch, batch_idx, optimizer_idx=0):
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("val_loss", loss)
        self.log("val_recall", -loss)
        self.log("metric_to_track", loss)


class AdamWithPlateau(_Parts):
    # Adam + LR scheduler (reference 002)
    def configure_optimizers(self):
        opt = Adam(self.parameters(), lr=1e-2)
        return [opt], [ReduceLROnPlateau(opt)]


class TwoOptimizersOneScheduler(_Parts):
    # two optimizers, one scheduler for adam only (reference 001)
    def configure_optimizers(self):
        opt1 = Adam(self.a.parameters(), lr=1e-2)
        opt2 = SGD(self.b.parameters(), lr=1e-2)
        optimizers = [opt1, opt2]
        lr_schedulers = {"scheduler": ReduceLROnPlateau(opt1), "monitor": "metric_to_track"}
        return optimizers, lr_schedulers


class TwoOptimizersTwoSchedulers(_Parts):
    # two optimizers, two schedulers (reference 001)
    def configure_optimizers(self):
        opt1 = Adam(self.a.parameters(), lr=1e-2)
        opt2 = SGD(self.b.parameters(), lr=1e-2)
        return [opt1, opt2], [
            StepLR(opt1, step_size=1),
            OneCycleLR(opt2, max_lr=0.1, total_steps=50),
        ]


class SchedulerDicts(_Parts):
    # Same as above with additional params passed to the first scheduler (reference 002)
    def configure_optimizers(self):
        optimizers = [Adam(self.a.parameters(), lr=1e-2), SGD(self.b.parameters(), lr=1e-2)]
        schedulers = [
            {
                "scheduler": ReduceLROnPlateau(optimizers[0], mode="max", patience=7),
                "monitor": "val_recall",  # Default: val_loss
                "interval": "epoch",
                "frequency": 1,
            },
            LambdaLR(optimizers[1], lambda epoch: 0.95**epoch),
        ]
        return optimizers, schedulers


class StepInterval(_Parts):
    # a dict with optimizer and lr_scheduler, stepped every batch
    def configure_optimizers(self):
        opt = SGD(self.parameters(), lr=1e-2)
        sched = StepLR(opt, step_size=4, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_data(n: int = 48, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


ALL = (
    AdamWithPlateau,
    TwoOptimizersOneScheduler,
    TwoOptimizersTwoSchedulers,
    SchedulerDicts,
    StepInterval,
)


def main(cls: type[_Parts] = StepInterval, max_epochs: int = 3, seed: int = 0) -> _Parts:
    torch.manual_seed(seed)
    model = cls()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data(), make_data(n=16))
    lrs = [o.param_groups[0]["lr"] for o in trainer.optimizers]
    print(f"{cls.__name__}: learning rates after {max_epochs} epochs: {lrs}")
    return model


if __name__ == "__main__":
    for cls in ALL:
        main(cls)
