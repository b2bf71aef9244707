"""Reference 001, "Improve training speed with model toggling": a GAN accumulating 2 batches.

``optimizer.toggle_model(sync_grad=...)`` needs the optimizer-toggling plugin
(``pip install loopkit-toggling``). Run: ``python examples/trainer/manual_toggle_model.py``.
"""

from __future__ import annotations

import torch
from torch import nn
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

    def __init__(self):
        super().__init__()
        self.G = Generator()
        self.D = Discriminator()

    def sample_G(self, n):
        return self.G(self._Z.sample((n,)))

    def configure_optimizers(self):
        g_opt = torch.optim.Adam(self.G.parameters(), lr=1e-3)
        d_opt = torch.optim.Adam(self.D.parameters(), lr=1e-3)
        return g_opt, d_opt


# -- the document's code -------------------------------------------------------------------------
# Scenario for a GAN with gradient accumulation every 2 batches and optimized for multiple gpus.
class SimpleGAN(GANParts):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        # Implementation follows the PyTorch tutorial:
        # https://pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html
        g_opt, d_opt = self.optimizers()

        X, _ = batch
        X.requires_grad = True
        batch_size = X.shape[0]

        real_label = torch.ones((batch_size, 1), device=self.device)
        fake_label = torch.zeros((batch_size, 1), device=self.device)

        # Sync and clear gradients
        # at the end of accumulation or
        # at the end of an epoch.
        is_last_batch_to_accumulate = (batch_idx + 1) % 2 == 0 or self.trainer.is_last_batch

        g_X = self.sample_G(batch_size)

        ##########################
        # Optimize Discriminator #
        ##########################
        with d_opt.toggle_model(sync_grad=is_last_batch_to_accumulate):
            d_x = self.D(X)
            errD_real = self.criterion(d_x, real_label)

            d_z = self.D(g_X.detach())
            errD_fake = self.criterion(d_z, fake_label)

            errD = errD_real + errD_fake

            self.manual_backward(errD)
            if is_last_batch_to_accumulate:
                d_opt.step()
                d_opt.zero_grad()

        ######################
        # Optimize Generator #
        ######################
        with g_opt.toggle_model(sync_grad=is_last_batch_to_accumulate):
            d_z = self.D(g_X)
            errG = self.criterion(d_z, real_label)

            self.manual_backward(errG)
            if is_last_batch_to_accumulate:
                g_opt.step()
                g_opt.zero_grad()

        self.log_dict({"g_loss": errG, "d_loss": errD}, prog_bar=True)


def make_data(n: int = 40, batch_size: int = 8) -> DataLoader:
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
    print("global_step", trainer.global_step, "metrics", trainer.progress_bar_metrics)
    return model


if __name__ == "__main__":
    main()
