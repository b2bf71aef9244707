"""References 001 and 004, "Use multiple optimizers (like GANs)" [manual], on synthetic data.

``SimpleGAN`` is the documents' code with the import changed. ``Generator``, ``Discriminator``,
``criterion`` and ``_Z`` are supplied (the documents leave them out).
Run: ``python examples/trainer/manual_gan.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule as LightningModule
from loopkit import Trainer

LATENT, FEATURES = 4, 6


# -- supplied ------------------------------------------------------------------------------------
class Generator(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(LATENT, 16), nn.ReLU(), nn.Linear(16, FEATURES))


class Discriminator(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 1))


class GANParts(LightningModule):
    criterion = nn.BCEWithLogitsLoss()
    _Z = torch.distributions.Normal(torch.zeros(LATENT), torch.ones(LATENT))


# -- the documents' code -------------------------------------------------------------------------
class SimpleGAN(GANParts):
    def __init__(self):
        super().__init__()
        self.G = Generator()
        self.D = Discriminator()

        # Important: This property activates manual optimization.
        self.automatic_optimization = False

    def sample_z(self, n) -> Tensor:
        sample = self._Z.sample((n,))
        return sample

    def sample_G(self, n) -> Tensor:
        z = self.sample_z(n)
        return self.G(z)

    def training_step(self, batch, batch_idx):
        # Implementation follows the PyTorch tutorial:
        # https://pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html
        g_opt, d_opt = self.optimizers()

        X, _ = batch
        batch_size = X.shape[0]

        real_label = torch.ones((batch_size, 1), device=self.device)
        fake_label = torch.zeros((batch_size, 1), device=self.device)

        g_X = self.sample_G(batch_size)

        ##########################
        # Optimize Discriminator #
        ##########################
        d_x = self.D(X)
        errD_real = self.criterion(d_x, real_label)

        d_z = self.D(g_X.detach())
        errD_fake = self.criterion(d_z, fake_label)

        errD = errD_real + errD_fake

        d_opt.zero_grad()
        self.manual_backward(errD)
        d_opt.step()

        ######################
        # Optimize Generator #
        ######################
        d_z = self.D(g_X)
        errG = self.criterion(d_z, real_label)

        g_opt.zero_grad()
        self.manual_backward(errG)
        g_opt.step()

        self.log_dict({"g_loss": errG, "d_loss": errD}, prog_bar=True)

    def configure_optimizers(self):
        g_opt = torch.optim.Adam(self.G.parameters(), lr=1e-5)
        d_opt = torch.optim.Adam(self.D.parameters(), lr=1e-5)
        return g_opt, d_opt


def make_data(n: int = 48, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, FEATURES, generator=g) * 0.5 + 2.0
    return DataLoader(TensorDataset(x, torch.zeros(n)), batch_size=batch_size)


def main(max_epochs: int = 2, seed: int = 0) -> SimpleGAN:
    torch.manual_seed(seed)
    model = SimpleGAN()
    trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, make_data())
    # Two optimizers stepped on every batch, and global_step counted each batch once.
    print("global_step", trainer.global_step, "metrics", trainer.progress_bar_metrics)
    return model


if __name__ == "__main__":
    main()
