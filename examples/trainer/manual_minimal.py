"""Reference 001/004, "Manual optimization": the minimal example, on synthetic data.

The module is the documents' own code with the import changed (``LightningModule`` becomes
``loopkit.LoopModule``); ``compute_loss`` is supplied because the documents leave it out.
Run: ``python examples/trainer/manual_minimal.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer


class MyModel(LightningModule):
    def __init__(self):
        super().__init__()
        # Important: This property activates manual optimization.
        self.automatic_optimization = False
        self.layer = nn.Linear(8, 1)  # supplied: the document's model has no layers

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = self.compute_loss(batch)
        self.manual_backward(loss)
        opt.step()

    # -- supplied: the pieces the document leaves to the reader --------------------------------

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_data(n: int = 64, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def main(max_epochs: int = 2, seed: int = 0) -> MyModel:
    torch.manual_seed(seed)
    model = MyModel()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    return model


if __name__ == "__main__":
    trained = main()
    print("trained", type(trained).__name__, "weights", trained.layer.weight.flatten().tolist())
