"""Reference 001's GAN: toggling plus accumulation every 2 batches, in a Fabric loop."""

from __future__ import annotations

import contextlib
import typing as t

import pytest
import torch
from torch import nn

from loopkit import Fabric
from loopkit_accumulation import Accumulation

pytest.importorskip("loopkit_toggling")

BATCHES = 5  # windows of 2, 2 and 1


def make_gan() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(11)
    generator = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))
    discriminator = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    return generator, discriminator


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return [
        (torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen))
        for _ in range(BATCHES)
    ]


def criterion(logits: torch.Tensor, target: float) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@contextlib.contextmanager
def frozen(params: t.Iterable[nn.Parameter], enabled: bool = True) -> t.Iterator[None]:
    params = list(params) if enabled else []
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def plain_gan(toggle: bool = True) -> tuple[nn.Module, nn.Module]:
    generator, discriminator = make_gan()
    opt_g = torch.optim.Adam(generator.parameters(), lr=0.05)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=0.05)
    batches = data()
    for batch_idx, (x, z) in enumerate(batches):
        last_in_window = (batch_idx + 1) % 2 == 0 or batch_idx == len(batches) - 1
        window = min(2, len(batches) - (batch_idx - batch_idx % 2))
        g_x = generator(z)
        with frozen(generator.parameters(), toggle):
            err_d = criterion(discriminator(x), 1.0) + criterion(discriminator(g_x.detach()), 0.0)
            (err_d / window).backward()
            if last_in_window:
                opt_d.step()
                opt_d.zero_grad()
        with frozen(discriminator.parameters(), toggle):
            err_g = criterion(discriminator(g_x), 1.0)
            (err_g / window).backward()
            if last_in_window:
                opt_g.step()
                opt_g.zero_grad()
    return generator, discriminator


def fabric_gan() -> tuple[nn.Module, nn.Module]:
    generator, discriminator = make_gan()
    accumulation = Accumulation(2)
    fabric = Fabric(accelerator="cpu", plugins=[accumulation, "toggling"])
    toggling = fabric.get_plugin("toggling")
    g, opt_g = fabric.setup(generator, torch.optim.Adam(generator.parameters(), lr=0.05))
    d, opt_d = fabric.setup(discriminator, torch.optim.Adam(discriminator.parameters(), lr=0.05))
    batches = data()
    for batch_idx, (x, z) in enumerate(batches):
        with accumulation([g, d], batch_idx, len(batches)) as should_step:
            g_x = g(z)
            with toggling.toggled([g, d], opt_d, [opt_g, opt_d]):
                err_d = criterion(d(x), 1.0) + criterion(d(g_x.detach()), 0.0)
                fabric.backward(err_d, model=d)
                if should_step:
                    opt_d.step()
                    opt_d.zero_grad()
            with toggling.toggled([g, d], opt_g, [opt_g, opt_d]):
                err_g = criterion(d(g_x), 1.0)
                fabric.backward(err_g, model=g)
                if should_step:
                    opt_g.step()
                    opt_g.zero_grad()
    return generator, discriminator


def test_gan_with_toggling_and_accumulation_matches_the_plain_loop() -> None:
    g, d = fabric_gan()
    g_ref, d_ref = plain_gan()
    for p, q in zip([*g.parameters(), *d.parameters()], [*g_ref.parameters(), *d_ref.parameters()]):
        assert torch.equal(p, q)
    # With accumulation, toggling changes the result: without it the generator's loss would
    # leak into the discriminator's accumulated gradients.
    _, d_untoggled = plain_gan(toggle=False)
    assert not torch.equal(d_untoggled[0].weight, d_ref[0].weight)


# -- the same GAN in automatic optimization: each closure toggled, losses divided per window --


def test_automatic_gan_with_accumulation_matches_the_plain_loop() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from loopkit import LoopModule, Trainer

    class AutomaticGAN(LoopModule):
        def __init__(self) -> None:
            super().__init__()
            self.G, self.D = make_gan()

        def training_step(self, batch, batch_idx, optimizer_idx):  # type: ignore[no-untyped-def]
            x, z = batch
            if optimizer_idx == 0:
                return criterion(self.D(self.G(z)), 1.0)
            return criterion(self.D(x), 1.0) + criterion(self.D(self.G(z).detach()), 0.0)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return [
                torch.optim.Adam(self.G.parameters(), lr=0.05),
                torch.optim.Adam(self.D.parameters(), lr=0.05),
            ]

    module = AutomaticGAN()
    xs, zs = zip(*data())
    loader = DataLoader(TensorDataset(torch.cat(xs), torch.cat(zs)), batch_size=4)
    trainer = Trainer(
        accelerator="cpu", max_epochs=2, accumulate_grad_batches=2, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, loader)

    generator, discriminator = make_gan()
    opts = [
        torch.optim.Adam(generator.parameters(), lr=0.05),
        torch.optim.Adam(discriminator.parameters(), lr=0.05),
    ]
    batches = data()
    for _ in range(2):
        for batch_idx, (x, z) in enumerate(batches):
            first = batch_idx % 2 == 0
            last = (batch_idx + 1) % 2 == 0 or batch_idx == len(batches) - 1
            window = min(2, len(batches) - (batch_idx - batch_idx % 2))
            with frozen(discriminator.parameters()):
                loss = criterion(discriminator(generator(z)), 1.0)
                if first:
                    opts[0].zero_grad()
                (loss / window).backward()
                if last:
                    opts[0].step()
            with frozen(generator.parameters()):
                g_x = generator(z).detach()
                loss = criterion(discriminator(x), 1.0) + criterion(discriminator(g_x), 0.0)
                if first:
                    opts[1].zero_grad()
                (loss / window).backward()
                if last:
                    opts[1].step()
    assert trainer.global_step == 6
    mine = [*module.G.parameters(), *module.D.parameters()]
    for p, q in zip(mine, [*generator.parameters(), *discriminator.parameters()]):
        assert torch.equal(p, q)
