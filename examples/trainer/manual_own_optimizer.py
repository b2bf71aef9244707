"""References 001 and 004, "Access your own optimizer" [manual], on synthetic data.

``optimizer.optimizer`` is the user's own ``torch.optim`` object; stepping it directly bypasses
precision and strategy handling, as the documents warn. Run:
``python examples/trainer/manual_own_optimizer.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.layer = nn.Linear(8, 1)  # supplied

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()

        # `optimizer` is a `LightningOptimizer` wrapping the optimizer.
        # To access it, do the following.
        # However, it won't work on TPU, AMP, etc...
        optimizer = optimizer.optimizer
        # supplied: the document's "..."
        optimizer.zero_grad()
        x, y = batch
        nn.functional.mse_loss(self.layer(x), y).backward()
        optimizer.step()

    def configure_optimizers(self):  # supplied
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_data(n: int = 48, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def main(max_epochs: int = 2, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    model = Model()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    print("weights", model.layer.weight.flatten().tolist())
    return model


if __name__ == "__main__":
    main()
