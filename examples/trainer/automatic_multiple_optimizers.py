"""References 001 and 002, "Use multiple optimizers (like GANs)" in automatic optimization.

With several optimizers, automatic optimization calls ``training_step(batch, batch_idx,
optimizer_idx)`` once per optimizer, each followed by its own zero_grad, backward and step
(Lightning 2.x dropped this; loopkit keeps it). When the optimizer-toggling plugin is installed,
the other optimizers' parameters are frozen while one trains. ``global_step`` counts each batch
once. Run: ``python examples/trainer/automatic_multiple_optimizers.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import SGD, Adam
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer

LATENT, FEATURES = 4, 6


class GAN(LightningModule):
    # supplied: the documents show only configure_optimizers for this case
    def __init__(self):
        super().__init__()
        self.G = nn.Sequential(nn.Linear(LATENT, 16), nn.ReLU(), nn.Linear(16, FEATURES))
        self.D = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 1))
        self.criterion = nn.BCEWithLogitsLoss()

    def training_step(self, batch, batch_idx, optimizer_idx):
        X, _ = batch
        z = torch.randn(X.shape[0], LATENT)
        fake = self.G(z)
        real_label = torch.ones(X.shape[0], 1)
        if optimizer_idx == 0:  # the generator
            return self.criterion(self.D(fake), real_label)
        # the discriminator
        errD_real = self.criterion(self.D(X), real_label)
        errD_fake = self.criterion(self.D(fake.detach()), torch.zeros(X.shape[0], 1))
        return errD_real + errD_fake

    # two optimizers, no schedulers (the documents' form)
    def configure_optimizers(self):
        return Adam(self.G.parameters(), lr=1e-3), SGD(self.D.parameters(), lr=1e-2)


def make_data(n: int = 48, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, FEATURES, generator=g) * 0.5 + 2.0
    return DataLoader(TensorDataset(x, torch.zeros(n)), batch_size=batch_size)


def main(max_epochs: int = 2, seed: int = 0, max_steps: int = -1) -> GAN:
    torch.manual_seed(seed)
    model = GAN()
    trainer = Trainer(
        max_epochs=max_epochs, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    print("global_step", trainer.global_step, "(one per batch, both optimizers stepped)")
    return model


if __name__ == "__main__":
    main()
