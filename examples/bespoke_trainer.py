"""A different trainer, assembled from loopkit's parts: alternating GAN training.

``loopkit.Trainer`` is one assembly of the parts; this is another, written by a user. It takes
the loop (``loopkit.loop.FitLoop``: epochs, batches, stop conditions, loop hooks), the
``configure_optimizers`` parser (``loopkit.optim``) and a ``Fabric`` (devices, precision, the hook
bus), and adds its own optimization: the discriminator steps on every batch, the generator every
``k``-th batch. It fires two hooks of its own through ``call``: ``on_discriminator_step`` and
``on_generator_step``; any callback (or the module) with a method of that name receives them.

Run: ``python examples/bespoke_trainer.py``.
"""

from __future__ import annotations

import typing as t

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Fabric
from loopkit.loop import FitLoop, Progress
from loopkit.optim import parse_configure_optimizers


class AlternatingGANTrainer:
    """Train a module with ``generator_loss(batch)``, ``discriminator_loss(batch)`` and
    ``configure_optimizers() -> (g_opt, d_opt)``: D every batch, G every ``k`` batches."""

    def __init__(
        self, *, max_epochs: int, k: int = 2, callbacks: t.Any = None, **fabric_args: t.Any
    ):
        self.fabric = Fabric(callbacks=callbacks, **fabric_args)
        self.max_epochs, self.k = max_epochs, k
        self.progress = Progress()  # epoch, global_step, batch index: the parts' counters

    def fit(self, module: nn.Module, data: t.Any) -> None:
        fabric = self.fabric
        optimizers, schedulers = parse_configure_optimizers(module.configure_optimizers())
        if len(optimizers) != 2 or schedulers:
            raise ValueError("configure_optimizers() must return (g_opt, d_opt), no schedulers")
        model, g_opt, d_opt = fabric.setup(module, *optimizers)
        loader = fabric.setup_dataloaders(data)
        # The loop passes trainer= and module= with every hook it fires; ours do the same.
        call = fabric.call

        def train_step(batch: t.Any, batch_idx: int) -> dict[str, torch.Tensor]:
            d_loss = model.discriminator_loss(batch)
            d_opt.zero_grad()
            fabric.backward(d_loss)
            d_opt.step()
            call("on_discriminator_step", trainer=self, module=module, loss=d_loss.detach())
            out = {"d_loss": d_loss.detach()}
            if (batch_idx + 1) % self.k == 0:
                g_loss = model.generator_loss(batch)
                g_opt.zero_grad()
                fabric.backward(g_loss)
                g_opt.step()
                call("on_generator_step", trainer=self, module=module, loss=g_loss.detach())
                out["g_loss"] = g_loss.detach()
            self.progress.stepped = True  # global_step: one per batch that stepped
            return out

        module.train()
        loop = FitLoop(call, self.progress, trainer=self, module=module, max_epochs=self.max_epochs)
        call("on_fit_start", trainer=self, module=module)
        loop.run(loader, train_step, num_batches=len(loader))
        call("on_fit_end", trainer=self, module=module)


# -- a user of it -----------------------------------------------------------------------------

LATENT, FEATURES = 4, 6


class TinyGAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.G = nn.Sequential(nn.Linear(LATENT, 16), nn.ReLU(), nn.Linear(16, FEATURES))
        self.D = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 1))
        self.bce = nn.BCEWithLogitsLoss()

    def discriminator_loss(self, batch: t.Any) -> torch.Tensor:
        (x,) = batch
        fake = self.G(torch.randn(x.shape[0], LATENT)).detach()
        real_loss = self.bce(self.D(x), torch.ones(x.shape[0], 1))
        return real_loss + self.bce(self.D(fake), torch.zeros(x.shape[0], 1))

    def generator_loss(self, batch: t.Any) -> torch.Tensor:
        (x,) = batch
        fake = self.G(torch.randn(x.shape[0], LATENT))
        return self.bce(self.D(fake), torch.ones(x.shape[0], 1))

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return torch.optim.Adam(self.G.parameters(), 1e-3), torch.optim.Adam(
            self.D.parameters(), 1e-3
        )


class LossHistory:
    """A callback for the custom hooks (and one of the loop's)."""

    def __init__(self) -> None:
        self.g: list[float] = []
        self.d: list[float] = []
        self.epochs = 0

    def on_generator_step(self, loss: torch.Tensor) -> None:
        self.g.append(float(loss))

    def on_discriminator_step(self, loss: torch.Tensor) -> None:
        self.d.append(float(loss))

    def on_train_epoch_end(self, trainer: AlternatingGANTrainer) -> None:
        self.epochs += 1


def make_data(n: int = 64, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, FEATURES, generator=g) + 2.0), batch_size)


def main(
    max_epochs: int = 3, k: int = 2, seed: int = 0
) -> tuple[TinyGAN, LossHistory, AlternatingGANTrainer]:
    torch.manual_seed(seed)
    model, history = TinyGAN(), LossHistory()
    trainer = AlternatingGANTrainer(
        max_epochs=max_epochs, k=k, callbacks=[history], accelerator="cpu"
    )
    trainer.fit(model, make_data())
    return model, history, trainer


if __name__ == "__main__":
    _, history, trainer = main()
    print(
        f"{history.epochs} epochs, global_step={trainer.progress.global_step}, "
        f"{len(history.d)} discriminator and {len(history.g)} generator steps; "
        f"last losses D={history.d[-1]:.3f} G={history.g[-1]:.3f}"
    )
