"""References 001 and 004, "Gradient accumulation" in manual optimization, on synthetic data.

``AccumulateN`` is reference 001's version (no loss scaling); ``AccumulateScaled`` is reference
004's (the loss divided by N). Run: ``python examples/trainer/manual_accumulation.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer

n = N = 3  # the documents' "accumulate gradients of n batches"


class _Parts(LightningModule):
    # supplied: the layers, the loss and the optimizer the documents leave out
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class AccumulateN(_Parts):
    # accumulate gradients over `n` batches
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()

        loss = self.compute_loss(batch)
        self.manual_backward(loss)

        # accumulate gradients of `n` batches
        if (batch_idx + 1) % n == 0:
            opt.step()
            opt.zero_grad()


class AccumulateScaled(_Parts):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()

        # scale losses by 1/N (for N batches of gradient accumulation)
        loss = self.compute_loss(batch) / N
        self.manual_backward(loss)

        # accumulate gradients of N batches
        if (batch_idx + 1) % N == 0:
            opt.step()
            opt.zero_grad()


def make_data(n_samples: int = 72, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_samples, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def main(cls: type[_Parts] = AccumulateScaled, max_epochs: int = 2, seed: int = 0) -> _Parts:
    torch.manual_seed(seed)
    model = cls()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    print(f"{cls.__name__}: global_step={trainer.global_step} (one per batch that stepped)")
    return model


if __name__ == "__main__":
    main(AccumulateN)
    main(AccumulateScaled)
