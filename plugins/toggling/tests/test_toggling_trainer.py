"""The GANs of references 004 and 001 in loopkit.Trainer, against plain PyTorch loops."""

from __future__ import annotations

import contextlib
import typing as t

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import SingleDeviceStrategy
from loopkit.module import LoopModule
from loopkit.trainer import Trainer

SAMPLES, BATCH = 20, 4  # 5 batches per epoch: accumulation windows of 2, 2 and 1
LR = 0.05


def make_gan() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(7)
    generator = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))
    discriminator = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    return generator, discriminator


def dataset() -> TensorDataset:
    gen = torch.Generator().manual_seed(3)
    x, z = torch.randn(SAMPLES, 3, generator=gen), torch.randn(SAMPLES, 2, generator=gen)
    return TensorDataset(x, z)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = dataset()
    return [data[i : i + BATCH] for i in range(0, SAMPLES, BATCH)]


def criterion(logits: torch.Tensor, target: float) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@contextlib.contextmanager
def frozen(params: t.Iterable[nn.Parameter]) -> t.Iterator[None]:
    """What the documents say toggling does, written out by hand."""
    params = list(params)
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def fit(module: LoopModule, **kwargs: t.Any) -> Trainer:
    kwargs.setdefault("max_epochs", 2)
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )
    trainer.fit(module, DataLoader(dataset(), batch_size=BATCH))
    return trainer


def assert_same(module: LoopModule, generator: nn.Module, discriminator: nn.Module) -> None:
    mine = [*module.G.parameters(), *module.D.parameters()]
    for p, q in zip(mine, [*generator.parameters(), *discriminator.parameters()]):
        assert torch.equal(p, q)
    assert all(p.requires_grad for p in mine)


class GAN(LoopModule):
    def __init__(self) -> None:
        super().__init__()
        self.G, self.D = make_gan()
        self.automatic_optimization = False
        self.d_grads: list[torch.Tensor] = []

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        g_opt = torch.optim.Adam(self.G.parameters(), lr=LR)
        d_opt = torch.optim.Adam(self.D.parameters(), lr=LR)
        return g_opt, d_opt


# -- reference 004: manual optimization with toggle_optimizer / untoggle_optimizer ------------


class ToggledGAN(GAN):
    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        g_opt, d_opt = self.optimizers()
        x, z = batch
        g_x = self.G(z)

        self.toggle_optimizer(d_opt)
        assert not any(p.requires_grad for p in self.G.parameters())
        err_d = criterion(self.D(x), 1.0) + criterion(self.D(g_x.detach()), 0.0)
        d_opt.zero_grad()
        self.manual_backward(err_d)
        d_opt.step()
        self.untoggle_optimizer(d_opt)

        self.toggle_optimizer(g_opt)
        assert not any(p.requires_grad for p in self.D.parameters())
        err_g = criterion(self.D(g_x), 1.0)
        g_opt.zero_grad()
        self.manual_backward(err_g)
        g_opt.step()
        self.untoggle_optimizer(g_opt)
        self.d_grads.append(self.D[0].weight.grad.clone())


def plain_toggled_gan(epochs: int = 2) -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    generator, discriminator = make_gan()
    g_opt = torch.optim.Adam(generator.parameters(), lr=LR)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=LR)
    d_grads = []
    for _ in range(epochs):
        for x, z in batches():
            g_x = generator(z)
            with frozen(generator.parameters()):
                err_d = criterion(discriminator(x), 1.0)
                err_d = err_d + criterion(discriminator(g_x.detach()), 0.0)
                d_opt.zero_grad()
                err_d.backward()
                d_opt.step()
            with frozen(discriminator.parameters()):
                err_g = criterion(discriminator(g_x), 1.0)
                g_opt.zero_grad()
                err_g.backward()
                g_opt.step()
            d_grads.append(discriminator[0].weight.grad.clone())
    return generator, discriminator, d_grads


def test_reference_004_gan_with_toggle_optimizer_matches_plain_pytorch() -> None:
    module = ToggledGAN()
    trainer = fit(module)
    generator, discriminator, d_grads = plain_toggled_gan()
    assert_same(module, generator, discriminator)
    assert len(module.d_grads) == len(d_grads) == 10
    for mine, ref in zip(module.d_grads, d_grads):
        assert torch.equal(mine, ref)  # the generator's loss never reached D's gradients
    assert trainer.global_step == 10  # one step per batch, however many optimizers stepped


# -- reference 001: toggle_model(sync_grad=...) with accumulation every 2 batches ---------------


class AccumulatingGAN(GAN):
    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        g_opt, d_opt = self.optimizers()
        x, z = batch
        x.requires_grad = True
        is_last_batch_to_accumulate = (batch_idx + 1) % 2 == 0 or self.trainer.is_last_batch
        g_x = self.G(z)

        with d_opt.toggle_model(sync_grad=is_last_batch_to_accumulate):
            err_d = criterion(self.D(x), 1.0) + criterion(self.D(g_x.detach()), 0.0)
            self.manual_backward(err_d)
            if is_last_batch_to_accumulate:
                d_opt.step()
                d_opt.zero_grad()

        with g_opt.toggle_model(sync_grad=is_last_batch_to_accumulate):
            err_g = criterion(self.D(g_x), 1.0)
            self.manual_backward(err_g)
            if is_last_batch_to_accumulate:
                g_opt.step()
                g_opt.zero_grad()


def plain_accumulating_gan(epochs: int = 2) -> tuple[nn.Module, nn.Module]:
    generator, discriminator = make_gan()
    g_opt = torch.optim.Adam(generator.parameters(), lr=LR)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=LR)
    for _ in range(epochs):
        data = batches()
        for batch_idx, (x, z) in enumerate(data):
            x.requires_grad = True
            last = (batch_idx + 1) % 2 == 0 or batch_idx == len(data) - 1
            g_x = generator(z)
            with frozen(generator.parameters()):
                err_d = criterion(discriminator(x), 1.0)
                err_d = err_d + criterion(discriminator(g_x.detach()), 0.0)
                err_d.backward()
                if last:
                    d_opt.step()
                    d_opt.zero_grad()
            with frozen(discriminator.parameters()):
                err_g = criterion(discriminator(g_x), 1.0)
                err_g.backward()
                if last:
                    g_opt.step()
                    g_opt.zero_grad()
    return generator, discriminator


class BackwardSyncRecorder(SingleDeviceStrategy):
    """Counts backward passes run outside no_backward_sync (those would all-reduce)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = 0
        self.synced = 0
        self.blocked_backwards = 0

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True):  # type: ignore[override]
        if not enabled:
            yield
            return
        self.blocked += 1
        try:
            yield
        finally:
            self.blocked -= 1

    def backward(self, loss, module, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.blocked:
            self.blocked_backwards += 1
        else:
            self.synced += 1
        super().backward(loss, module, *args, **kwargs)


def test_reference_001_gan_with_toggle_model_and_accumulation_matches_plain_pytorch() -> None:
    strategy = BackwardSyncRecorder()
    module = AccumulatingGAN()
    trainer = fit(module, strategy=strategy)
    generator, discriminator = plain_accumulating_gan()
    assert_same(module, generator, discriminator)
    assert trainer.global_step == 6  # windows 2, 2, 1 in each of 2 epochs
    # Two backward passes per batch; only those of a window's last batch synchronise.
    assert (strategy.synced, strategy.blocked_backwards) == (2 * 6, 2 * 4)


# -- automatic optimization with several optimizers: each closure runs toggled ----------------


class AutomaticGAN(LoopModule):
    def __init__(self) -> None:
        super().__init__()
        self.G, self.D = make_gan()
        self.flags_seen: list[tuple[int, bool, bool]] = []

    def training_step(self, batch, batch_idx, optimizer_idx):  # type: ignore[no-untyped-def]
        x, z = batch
        self.flags_seen.append(
            (
                optimizer_idx,
                any(p.requires_grad for p in self.G.parameters()),
                any(p.requires_grad for p in self.D.parameters()),
            )
        )
        if optimizer_idx == 0:
            return criterion(self.D(self.G(z)), 1.0)
        g_x = self.G(z).detach()
        return criterion(self.D(x), 1.0) + criterion(self.D(g_x), 0.0)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        g_opt = torch.optim.Adam(self.G.parameters(), lr=LR)
        d_opt = torch.optim.Adam(self.D.parameters(), lr=LR)
        return [g_opt, d_opt]


def plain_automatic_gan(epochs: int = 2) -> tuple[nn.Module, nn.Module]:
    generator, discriminator = make_gan()
    g_opt = torch.optim.Adam(generator.parameters(), lr=LR)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=LR)
    for _ in range(epochs):
        for x, z in batches():
            with frozen(discriminator.parameters()):
                loss = criterion(discriminator(generator(z)), 1.0)
                g_opt.zero_grad()
                loss.backward()
                g_opt.step()
            with frozen(generator.parameters()):
                g_x = generator(z).detach()
                loss = criterion(discriminator(x), 1.0) + criterion(discriminator(g_x), 0.0)
                d_opt.zero_grad()
                loss.backward()
                d_opt.step()
    return generator, discriminator


def test_automatic_optimization_runs_each_optimizer_toggled() -> None:
    module = AutomaticGAN()
    trainer = fit(module)
    generator, discriminator = plain_automatic_gan()
    assert_same(module, generator, discriminator)
    assert trainer.global_step == 10
    # Inside the generator's closure only G trains; inside the discriminator's only D.
    assert set(module.flags_seen) == {(0, True, False), (1, False, True)}


def test_toggle_outside_a_trainer_run_is_a_clear_error() -> None:
    module = ToggledGAN()
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        module.toggle_optimizer(torch.optim.SGD(module.G.parameters(), lr=0.1))


def test_paired_toggle_left_open_by_an_exception_is_restored() -> None:
    class Crashing(ToggledGAN):
        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            _, d_opt = self.optimizers()
            self.toggle_optimizer(d_opt)
            raise KeyError("boom")

    module = Crashing()
    with pytest.raises(KeyError, match="boom"):
        fit(module)
    assert all(p.requires_grad for p in module.parameters())


def test_trainer_uses_the_instance_named_in_plugins() -> None:
    from loopkit_toggling import Toggling

    seen: list[bool] = []

    class Watching(ToggledGAN):
        def toggle_optimizer(self, optimizer):  # type: ignore[no-untyped-def]
            super().toggle_optimizer(optimizer)
            seen.append(self.trainer.fabric.get_plugin("toggling").is_toggled(optimizer))

    trainer = fit(Watching(), plugins=["toggling"], max_epochs=1)
    assert isinstance(trainer.fabric.get_plugin("toggling"), Toggling)
    assert seen == [True] * 10
