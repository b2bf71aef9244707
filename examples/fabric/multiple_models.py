"""Every way of pairing models and optimizers with ``fabric.setup``, each trained a few steps.

1. one model, one optimizer;
2. one model, two optimizers (one per layer, each with its own learning rate);
3. two models, one optimizer (an auto-encoder grouping encoder and decoder in one module);
4. two models, two optimizers (a GAN: ``fabric.setup`` called once per model).

Run: ``python examples/fabric/multiple_models.py``. Each ``train_*`` function takes the Fabric to
use and returns the trained modules, so the tests can compare the final weights with the same
loops written in plain PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Fabric

SEED = 42
STEPS = 8


class LitModel(nn.Module):
    """Two layers, so that each can have an optimizer of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Linear(8, 16)
        self.layer2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(torch.relu(self.layer1(x)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 4), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class AutoEncoder(nn.Module):
    """Two models grouped under one top-level module, so one optimizer updates both."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Generator(nn.Module):
    def __init__(self, latent: int = 4) -> None:
        super().__init__()
        self.latent = latent
        self.net = nn.Sequential(nn.Linear(latent, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_data(n: int = 64) -> TensorDataset:
    """Regression data from a fixed generator (independent of the global seed)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)


def make_loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(make_data(), batch_size=8, shuffle=True)


def train_one_model_one_optimizer(fabric: Fabric, steps: int = STEPS) -> nn.Module:
    fabric.seed_everything(SEED)
    model = LitModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    # Set up the model and optimizer together
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(make_loader())
    for _, (x, y) in zip(range(steps), loader):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
    fabric.print(f"one model, one optimizer: loss {loss.item():.4f}")
    return model.module


def train_one_model_two_optimizers(fabric: Fabric, steps: int = STEPS) -> nn.Module:
    fabric.seed_everything(SEED)
    model = LitModel()
    optimizer1 = torch.optim.SGD(model.layer1.parameters(), lr=0.003)
    optimizer2 = torch.optim.SGD(model.layer2.parameters(), lr=0.01)
    # Set up the model and optimizers together
    model, optimizer1, optimizer2 = fabric.setup(model, optimizer1, optimizer2)
    loader = fabric.setup_dataloaders(make_loader())
    for _, (x, y) in zip(range(steps), loader):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer1.zero_grad()
        optimizer2.zero_grad()
        fabric.backward(loss)
        optimizer1.step()
        optimizer2.step()
    fabric.print(f"one model, two optimizers: loss {loss.item():.4f}")
    return model.module


def train_two_models_one_optimizer(fabric: Fabric, steps: int = STEPS) -> nn.Module:
    fabric.seed_everything(SEED)
    # Instantiate the big model
    autoencoder = AutoEncoder()
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=0.01)
    # Set up the model(s) and optimizer together
    autoencoder, optimizer = fabric.setup(autoencoder, optimizer)
    loader = fabric.setup_dataloaders(make_loader())
    for _, (x, _y) in zip(range(steps), loader):
        loss = nn.functional.mse_loss(autoencoder(x), x)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
    fabric.print(f"two models, one optimizer: reconstruction loss {loss.item():.4f}")
    return autoencoder.module


def train_gan(fabric: Fabric, steps: int = STEPS) -> tuple[nn.Module, nn.Module]:
    fabric.seed_everything(SEED)
    # Two models
    generator = Generator()
    discriminator = Discriminator()
    # Two optimizers
    optimizer_gen = torch.optim.SGD(generator.parameters(), lr=0.01)
    optimizer_dis = torch.optim.SGD(discriminator.parameters(), lr=0.001)
    # Set up generator
    generator, optimizer_gen = fabric.setup(generator, optimizer_gen)
    # Set up discriminator
    discriminator, optimizer_dis = fabric.setup(discriminator, optimizer_dis)
    loader = fabric.setup_dataloaders(make_loader())
    bce = nn.functional.binary_cross_entropy_with_logits
    for _, (real, _y) in zip(range(steps), loader):
        # real rows are x of the regression data: the generator learns to imitate them
        z = torch.randn(real.shape[0], generator.latent, device=fabric.device)
        fake = generator(z)
        ones = torch.ones(real.shape[0], 1, device=fabric.device)
        zeros = torch.zeros(real.shape[0], 1, device=fabric.device)

        # discriminator: real -> 1, fake -> 0 (the generator gets no gradient here)
        d_loss = bce(discriminator(real), ones) + bce(discriminator(fake.detach()), zeros)
        optimizer_dis.zero_grad()
        fabric.backward(d_loss, model=discriminator)
        optimizer_dis.step()

        # generator: make the discriminator say 1
        g_loss = bce(discriminator(fake), ones)
        optimizer_gen.zero_grad()
        fabric.backward(g_loss, model=generator)
        optimizer_gen.step()
    fabric.print(f"GAN: discriminator loss {d_loss.item():.4f}, generator loss {g_loss.item():.4f}")
    return generator.module, discriminator.module


def main() -> None:
    train_one_model_one_optimizer(Fabric(accelerator="cpu"))
    train_one_model_two_optimizers(Fabric(accelerator="cpu"))
    train_two_models_one_optimizer(Fabric(accelerator="cpu"))
    train_gan(Fabric(accelerator="cpu"))


if __name__ == "__main__":
    main()
