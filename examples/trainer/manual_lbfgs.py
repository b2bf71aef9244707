"""Reference 001, "Use closure for LBFGS-like optimizers" [manual], on synthetic data.

Run: ``python examples/trainer/manual_lbfgs.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer


class LBFGSModel(LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.layer = nn.Linear(8, 1)  # supplied

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=5)  # the document's (...)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()

        def closure():
            loss = self.compute_loss(batch)
            opt.zero_grad()
            self.manual_backward(loss)
            return loss

        opt.step(closure=closure)

    def compute_loss(self, batch):  # supplied
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)


def make_data(n: int = 48, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def main(max_epochs: int = 2, seed: int = 0) -> LBFGSModel:
    torch.manual_seed(seed)
    model = LBFGSModel()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    with torch.no_grad():
        print("final loss", float(model.compute_loss(next(iter(make_data())))))
    return model


if __name__ == "__main__":
    main()
