"""Reference 001, "Learning rate scheduling [manual]": schedulers stepped by hand.

``StepEveryBatch`` steps one scheduler every batch, ``StepEveryBatchTwo`` two schedulers (the
document's "multiple schedulers" form), ``StepEveryN`` every ``n`` batches and every ``n`` epochs
with ``self.trainer.is_last_batch``. The document's ``...`` (forward, backward, optimization) is
filled with one SGD step. Run: ``python examples/trainer/manual_lr_scheduling.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer

n = 2


class _Parts(LightningModule):
    # supplied: a model, its loss, the "do forward, backward, and optimization" part, and the
    # optimizers with schedulers
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def optimize(self, batch):
        for opt in self._as_list(self.optimizers()):
            opt.zero_grad()
        self.manual_backward(self.compute_loss(batch))
        for opt in self._as_list(self.optimizers()):
            opt.step()

    @staticmethod
    def _as_list(x):
        return x if isinstance(x, list) else [x]

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)]


class StepEveryBatch(_Parts):
    # step every batch
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        # do forward, backward, and optimization
        self.optimize(batch)

        # single scheduler
        sch = self.lr_schedulers()
        sch.step()


class StepEveryBatchTwo(_Parts):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.head = nn.Linear(8, 1)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x) + self.head(x), y)

    def configure_optimizers(self):
        opt1 = torch.optim.SGD(self.layer.parameters(), lr=0.1)
        opt2 = torch.optim.SGD(self.head.parameters(), lr=0.05)
        sch1 = torch.optim.lr_scheduler.StepLR(opt1, step_size=1, gamma=0.9)
        sch2 = torch.optim.lr_scheduler.ExponentialLR(opt2, gamma=0.8)
        return [opt1, opt2], [sch1, sch2]

    def training_step(self, batch, batch_idx):
        # do forward, backward, and optimization
        self.optimize(batch)

        # multiple schedulers
        sch1, sch2 = self.lr_schedulers()
        sch1.step()
        sch2.step()


class StepEveryN(_Parts):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        # do forward, backward, and optimization
        self.optimize(batch)

        sch = self.lr_schedulers()

        # step every `n` batches
        if (batch_idx + 1) % n == 0:
            sch.step()

        # step every `n` epochs
        if self.trainer.is_last_batch and (self.trainer.current_epoch + 1) % n == 0:
            sch.step()


def make_data(n_samples: int = 40, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_samples, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def main(cls: type[_Parts] = StepEveryN, max_epochs: int = 4, seed: int = 0) -> _Parts:
    torch.manual_seed(seed)
    model = cls()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    lrs = [o.param_groups[0]["lr"] for o in model._as_list(model.optimizers())]
    print(f"{cls.__name__}: learning rates after {max_epochs} epochs: {lrs}")
    return model


if __name__ == "__main__":
    for cls in (StepEveryBatch, StepEveryBatchTwo, StepEveryN):
        main(cls)
